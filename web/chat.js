// The room's chat: a log that takes every message as it arrives (the panel may be collapsed;
// then an unread count grows on its button), the history a welcome brings, and a form that
// sends. Text always goes in as text (textContent), never as HTML.

/** What the server calls a chat message that is empty or too long. */
const CHAT_REJECTED = /^chat text/;

export class Chat {
  /**
   * `ui`: {panel, toggle, badge, log, form, input, error}; `send(text)` hands a message to
   * the signaling socket and returns false when there is none.
   */
  constructor(ui, send) {
    this.ui = ui;
    this.send = send;
    this.unread = 0;
    this.ownId = null;
    ui.toggle.addEventListener("click", () => this.setOpen(ui.panel.hidden));
    ui.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
  }

  get open() {
    return !this.ui.panel.hidden;
  }

  setOpen(open) {
    this.ui.panel.hidden = !open;
    this.ui.toggle.setAttribute("aria-expanded", String(open));
    if (open) {
      this.unread = 0;
      this.ui.input.focus();
      this.scrollToEnd();
    }
    this.renderBadge();
  }

  /** A welcome's history replaces what the log shows (a rejoin brings it again). */
  showHistory(messages, ownId) {
    this.ownId = ownId;
    this.ui.log.replaceChildren(...(messages ?? []).map((m) => this.item(m)));
    this.scrollToEnd();
  }

  add(message) {
    this.ui.log.append(this.item(message));
    if (!this.open && message.from !== this.ownId) {
      this.unread += 1;
      this.renderBadge();
    }
    this.scrollToEnd();
  }

  /** The server turned a message away: true when it was about chat (and is now shown). */
  rejected(message) {
    if (!CHAT_REJECTED.test(message ?? "")) return false;
    this.showError(`Not sent: ${message}.`);
    return true;
  }

  showError(text) {
    this.ui.error.textContent = text;
    this.ui.error.hidden = !text;
  }

  clear() {
    this.ui.log.replaceChildren();
    this.unread = 0;
    this.showError("");
    this.renderBadge();
  }

  submit() {
    const text = this.ui.input.value;
    if (!text.trim()) return;
    if (!this.send(text)) {
      this.showError("Not sent: not connected to the server. Try again in a moment.");
      return;
    }
    this.showError("");
    this.ui.input.value = "";
  }

  item({ from, name, text, at }) {
    const li = document.createElement("li");
    if (from === this.ownId) li.classList.add("own");
    const who = document.createElement("span");
    who.className = "chat-name";
    who.textContent = name;
    const when = document.createElement("time");
    const date = new Date(at);
    when.dateTime = date.toISOString();
    when.textContent = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const body = document.createElement("p");
    body.className = "chat-text";
    body.textContent = text;
    li.append(who, " ", when, body);
    return li;
  }

  renderBadge() {
    const { badge, toggle } = this.ui;
    badge.textContent = this.unread > 0 ? String(this.unread) : "";
    badge.hidden = this.unread === 0;
    toggle.setAttribute(
      "aria-label",
      this.unread > 0 ? `Chat, ${this.unread} unread` : "Chat",
    );
  }

  scrollToEnd() {
    this.ui.log.scrollTop = this.ui.log.scrollHeight;
  }
}

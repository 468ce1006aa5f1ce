// The frame that call_page.mjs and meeting.mjs run in, for tests/browser.rs: the one JSON
// argument, one deadline for the whole script and a bounded timeout for each step, named
// phases, the browser (Debian's Chromium through playwright-core) and its tabs, and exactly
// one line of JSON on stdout at the end, also on a timeout, SIGTERM or an uncaught error:
// {"ok": true|false, "error"?, ...the scenario's result, "seen", "pages", "phases"}, where
// `pages` is what every open tab showed (the first thing to read on a failure).
//
//   const script = startScript("meeting.mjs", 120000, describeTab);
//   script.run({ six: sixScenario, ... }, { initScripts: [recordConnections] });

import { chromium } from "playwright-core";
import { tcpConnect, waitForServer } from "./net_probe.mjs";

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function withTimeout(promise, ms) {
  return Promise.race([promise, sleep(ms).then(() => Promise.reject(new Error(`no answer within ${ms} ms`)))]);
}

/** A failure the scenario explains itself: reported by its message, without a stack. */
export class ScenarioError extends Error {}

/**
 * Starts the frame of script `name`: its deadline (`args.timeoutMs`, else
 * `defaultTimeoutMs`) and the handlers that report whatever ends it. `describe(tab)`: what
 * a tab shows, for the report.
 */
export function startScript(name, defaultTimeoutMs, describe) {
  const args = JSON.parse(process.argv[2] ?? "{}");
  const started = Date.now();
  const deadline = started + (args.timeoutMs ?? defaultTimeoutMs);
  const remaining = () => Math.max(0, deadline - Date.now());
  let finished = false;

  const script = {
    args,
    // What the scenario saw along the way: reported even when it fails later.
    seen: {},
    phases: {},
    // One entry per opened tab: {name, url, page, console: [...]}.
    tabs: [],
    // The browser of the scenario, and any more it starts (closed at the end).
    context: null,
    browsers: [],
    // The tab a persistent context starts with; the first participant gets it.
    spareTab: null,

    remaining,
    /** A timeout for one step: at most `ms`, never past the deadline, never 0 (which
     * playwright takes as "no timeout"). */
    stepTimeout: (ms) => Math.max(1, Math.min(ms, remaining())),

    /** Records when a phase ended; on stderr too (node.err): where a slow run spent its time. */
    mark(phase) {
      script.phases[phase] = Date.now() - started;
      console.error(`${script.phases[phase]} ms: ${phase}`);
    },

    async finish(result, code) {
      if (finished) return;
      finished = true;
      // Describing the tabs and closing the browsers must not hang.
      setTimeout(() => process.exit(code), 8000).unref();
      const pages = await Promise.all(
        script.tabs.map((tab) =>
          withTimeout(describe(tab), 5000).catch((e) => ({ name: tab.name, url: tab.url, error: String(e) })),
        ),
      );
      const { seen, phases } = script;
      process.stdout.write(JSON.stringify({ ...result, seen, pages, phases }) + "\n");
      for (const browser of script.browsers) await browser.close().catch(() => {});
      process.exit(code);
    },

    /** Launches Chromium with the test's flags and profile (`options` may replace them). */
    async launch(options = {}) {
      const browser = await chromium.launchPersistentContext(options.userDataDir ?? args.userDataDir, {
        executablePath: args.chromium,
        headless: true,
        args: options.chromiumArgs ?? args.chromiumArgs,
        env: { ...process.env, HOME: args.home },
        timeout: script.stepTimeout(30000),
        viewport: args.viewport,
      });
      script.browsers.push(browser);
      for (const init of options.initScripts ?? []) await browser.addInitScript(init);
      return browser;
    },

    /** A tab for `name` in `browser` (the spare one first), its console kept for the report. */
    async newTab(name, url, browser = script.context) {
      const spare = browser === script.context ? script.spareTab : null;
      if (spare) script.spareTab = null;
      const page = spare ?? (await browser.newPage());
      const tab = { name, url: url.href, page, console: [] };
      script.tabs.push(tab);
      page.on("console", (m) => tab.console.push(`${m.type()}: ${m.text()}`));
      page.on("pageerror", (e) => tab.console.push(`pageerror: ${e.message}`));
      return tab;
    },

    /**
     * Waits (bounded) until rendez accepts connections at `args.probe`, starts the browser
     * with `initScripts` in every page, runs `scenarios[args.scenario]` and reports.
     */
    async run(scenarios, { initScripts = [] } = {}) {
      try {
        const { host, port } = args.probe;
        await waitForServer(() => tcpConnect(host, port, 300), `${host}:${port}`, deadline);
        script.mark("server_ready");
        script.context = await script.launch({ initScripts });
        script.spareTab = script.context.pages()[0] ?? null;
        script.mark("browser_started");
        const scenario = scenarios[args.scenario];
        if (!scenario) throw new Error(`unknown scenario ${args.scenario}`);
        await script.finish(await scenario(), 0);
      } catch (error) {
        const message = error instanceof ScenarioError ? error.message : String(error?.stack ?? error);
        await script.finish({ ok: false, error: message }, 1);
      }
    },
  };

  // A hard stop for the whole script, whatever is pending.
  setTimeout(() => script.finish({ ok: false, error: `${name} timed out after ${args.timeoutMs} ms` }, 2), remaining()).unref();
  process.on("SIGTERM", () => script.finish({ ok: false, error: "terminated (SIGTERM)" }, 3));
  process.on("uncaughtException", (e) => script.finish({ ok: false, error: "uncaught: " + String(e?.stack ?? e) }, 1));
  process.on("unhandledRejection", (e) => script.finish({ ok: false, error: "unhandled: " + String(e?.stack ?? e) }, 1));
  return script;
}

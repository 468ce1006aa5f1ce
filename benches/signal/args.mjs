// Command-line options of the benchmark scripts, through Node's own parser: every option is
// `--name VALUE` with a default; `--help` lists them; anything else stops with exit code 2.
// `checks` reads them as bounded numbers; shared by signal/ and fleet/.
import { parseArgs } from 'node:util';

export function options(argv, defaults, script) {
  const spec = { help: { type: 'boolean', short: 'h' } };
  for (const [name, value] of Object.entries(defaults)) spec[name] = { type: 'string', default: value };
  let values;
  try {
    ({ values } = parseArgs({ args: argv, options: spec, strict: true }));
  } catch (error) {
    console.error(`${script}: ${error.message}`);
    process.exit(2);
  }
  if (values.help) {
    console.log(`usage: node ${script} ` + Object.keys(defaults).map((k) => `[--${k} V]`).join(' '));
    process.exit(0);
  }
  delete values.help;
  return values;
}

/** Readers of `args` that stop `script` with exit code 2 on a value out of bounds. */
export function checks(args, script) {
  const fail = (message) => {
    console.error(`${script}: ${message}`);
    process.exit(2);
  };
  const intArg = (key, min, max) => {
    const v = Number(args[key]);
    if (!Number.isInteger(v) || v < min || v > max) fail(`--${key} must be an integer ${min}..${max}`);
    return v;
  };
  const numArg = (key, min, max) => {
    const v = Number(args[key]);
    if (!Number.isFinite(v) || v < min || v > max) fail(`--${key} must be a number ${min}..${max}`);
    return v;
  };
  return { fail, intArg, numArg };
}

/** Whether `host` is a loopback address (127.0.0.0/8 or ::1): the only targets allowed. */
export function isLoopback(host) {
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host) || host === '::1' || host === '[::1]';
}

export function round(x, digits) {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

export function sleep(seconds) {
  return new Promise((r) => setTimeout(r, seconds * 1000));
}

/** Waits for `promise` at most `seconds`; past that calls `onLate(message)` and goes on. */
export async function withDeadline(seconds, what, promise, onLate) {
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => {
      onLate(`${what}: deadline of ${seconds} s reached`);
      resolve();
    }, seconds * 1000);
  });
  await Promise.race([promise, timeout]);
  clearTimeout(timer);
}

// Command-line options of the benchmark scripts, through Node's own parser: every option is
// `--name VALUE` with a default; `--help` lists them; anything else stops with exit code 2.
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

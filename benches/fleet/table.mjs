#!/usr/bin/env node
// table.mjs — the Markdown table of benches/fleet/compare.sh: medians per topology over the
// runs in results.jsonl. Usage: node table.mjs results.jsonl [machine.txt]
import { readFileSync } from 'node:fs';

const [file, machineFile] = process.argv.slice(2);
const runs = readFileSync(file, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
const topologies = ['A', 'B', 'C'].filter((t) => runs.some((r) => r.topology === t));
const names = { A: 'A: 1 node', B: 'B: 1 node + Redis', C: 'C: 3 nodes + Redis' };

const pick = (run, path) => path.split('.').reduce((v, k) => (v === undefined || v === null ? undefined : v[k]), run);
const median = (xs) => {
  const s = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return undefined;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const cell = (t, path, digits, scale = 1) => {
  const v = median(runs.filter((r) => r.topology === t).map((r) => {
    const x = typeof path === 'function' ? path(r) : pick(r, path);
    return typeof x === 'number' ? x * scale : x;
  }));
  if (v === undefined) return '–';
  return v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
};
const sum = (...paths) => (r) => paths.reduce((s, p) => s + (pick(r, p) ?? 0), 0);
const perThousand = (cpuPath, eventsPath) => (r) => {
  const events = pick(r, eventsPath);
  return events > 0 ? (pick(r, cpuPath) * 1000 * 1000) / events : undefined;
};

const rows = [
  ['Join latency p50 / p99 (ms)', (t) => `${cell(t, 'join.p50_ms', 2)} / ${cell(t, 'join.p99_ms', 2)}`],
  ['Chat to the other members p50 / p99 (ms)', (t) => `${cell(t, 'chat.p50_ms', 2)} / ${cell(t, 'chat.p99_ms', 2)}`],
  ['… to members on the sender\'s node', (t) => `${cell(t, 'chat.same_node.p50_ms', 2)} / ${cell(t, 'chat.same_node.p99_ms', 2)}`],
  ['… to members on other nodes', (t) => `${cell(t, 'chat.other_node.p50_ms', 2)} / ${cell(t, 'chat.other_node.p99_ms', 2)}`],
  ['Signal to one peer p50 / p99 (ms)', (t) => `${cell(t, 'signal.p50_ms', 2)} / ${cell(t, 'signal.p99_ms', 2)}`],
  ['Burst of signals: delivered per second', (t) => cell(t, 'burst.delivered_per_second', 0)],
  ['Burst of signals: p50 / p99 (ms)', (t) => `${cell(t, 'burst.p50_ms', 1)} / ${cell(t, 'burst.p99_ms', 1)}`],
  ['Redis round trips per join / chat / signal', (t) => ['join', 'chat', 'signal'].map((k) => cell(t, `${k}.redis.round_trips_per_event`, 2)).join(' / ')],
  ['Scripts (EVALSHA) per join / chat / signal', (t) => ['join', 'chat', 'signal'].map((k) => cell(t, `${k}.redis.scripts_per_event`, 2)).join(' / ')],
  ['PUBLISH per join / chat / signal', (t) => ['join', 'chat', 'signal'].map((k) => cell(t, `${k}.redis.publish_per_event`, 2)).join(' / ')],
  ['Redis commands in all per join / chat / signal', (t) => ['join', 'chat', 'signal'].map((k) => cell(t, `${k}.redis.commands_per_event`, 1)).join(' / ')],
  ['Redis execution µs per join / chat (EVALSHA) / signal (PUBLISH)', (t) => [['join', 'evalsha'], ['chat', 'evalsha'], ['signal', 'publish']]
    .map(([k, c]) => cell(t, (r) => (pick(r, `${k}.redis.${c}_usec`) ?? NaN) / pick(r, `${k}.sent`), 1)).join(' / ')],
  ['Server CPU ms per 1000 joins', (t) => cell(t, perThousand('join.nodes_cpu_seconds', 'join.sent'), 0) + withRedis(t, 'join')],
  ['Server CPU ms per 1000 chat messages', (t) => cell(t, perThousand('chat.nodes_cpu_seconds', 'chat.sent'), 0) + withRedis(t, 'chat')],
  ['Server CPU ms per 1000 signals', (t) => cell(t, perThousand('signal.nodes_cpu_seconds', 'signal.sent'), 0) + withRedis(t, 'signal')],
  ['Messages lost (chat + signal + burst)', (t) => cell(t, sum('chat.lost', 'signal.lost', 'burst.lost'), 0)],
  ['Commands dropped by the nodes (queue to Redis full)', (t) => (t === 'A' ? '–' : cell(t, sum('chat.redis.dropped', 'signal.redis.dropped', 'burst.redis.dropped'), 0))],
  ['Other CPU-s on the machine (chat + signal)', (t) => cell(t, sum('chat.other_cpu_seconds', 'signal.other_cpu_seconds'), 2)],
  ['Client CPU-s (chat + signal)', (t) => cell(t, sum('chat.client_cpu_seconds', 'signal.client_cpu_seconds'), 2)],
];

function withRedis(t, phase) {
  if (t === 'A') return '';
  return ` + ${cell(t, perThousand(`${phase}.redis_cpu_seconds`, `${phase}.sent`), 0)} Redis`;
}

const first = runs[0];
const lines = [];
lines.push(`${first.participants} participants in ${first.rooms} rooms of ${first.room_size}; ` +
  `joins at ${first.join_rate}/s, chat and signals at ${first.rate}/s for ${first.duration} s each, bursts of ${first.burst_size} signals; ` +
  `medians of ${topologies.map((t) => `${runs.filter((r) => r.topology === t).length} × ${t}`).join(', ')}`);
lines.push('');
lines.push(`| | ${topologies.map((t) => names[t]).join(' | ')} |`);
lines.push(`| --- | ${topologies.map(() => '---:').join(' | ')} |`);
for (const [label, f] of rows) lines.push(`| ${label} | ${topologies.map(f).join(' | ')} |`);
const bad = runs.filter((r) => !r.ok);
if (bad.length) {
  lines.push('');
  lines.push(`**${bad.length} run(s) not ok** (a missing welcome, a lost message, an error, a dropped socket): ` +
    bad.map((r) => `${r.topology} rep ${r.rep}`).join(', ') + '; see results.jsonl.');
}
const ceilingFile = machineFile && machineFile.replace(/machine\.txt$/, 'redis-ceiling.csv');
let ceiling = '';
try { ceiling = readFileSync(ceilingFile, 'utf8'); } catch { /* not measured */ }
const rps = [...ceiling.matchAll(/^"(\d+) in flight","([\d.]+)"/gm)];
if (rps.length) {
  lines.push('');
  lines.push('redis-server alone (redis-benchmark, one connection, PUBLISH of 40 bytes): ' +
    rps.map(([, depth, r]) => `${Math.round(Number(r)).toLocaleString('en-US')}/s with ${depth} in flight`).join(', ') + '.');
}
if (machineFile) {
  lines.push('');
  lines.push('```');
  lines.push(readFileSync(machineFile, 'utf8').trim());
  lines.push('```');
}
console.log(lines.join('\n'));

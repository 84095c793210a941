// Shared helpers for the Switchboard k6 scenarios: configuration from the
// environment, client tokens, URLs, metrics shared by several scenarios and
// the end-of-test summary (text on stdout, JSON in SB_SUMMARY).
import crypto from 'k6/crypto';
import encoding from 'k6/encoding';
import { Counter } from 'k6/metrics';

const env = __ENV;

// ---------------------------------------------------------------------------
// Configuration

// Parses "250ms", "10s", "2m" or a bare number of seconds into milliseconds.
export function durationMs(value, fallback) {
  const v = value === undefined || value === '' ? fallback : value;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(String(v));
  if (!m) throw new Error(`bad duration: ${v}`);
  const unit = { ms: 1, s: 1000, m: 60000, h: 3600000 }[m[2] || 's'];
  return Math.round(parseFloat(m[1]) * unit);
}

export function num(name, fallback) {
  const v = env[name];
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${name} must be a number, got ${v}`);
  return n;
}

export function str(name, fallback) {
  const v = env[name];
  return v === undefined || v === '' ? fallback : v;
}

export function ms(name, fallback) {
  return durationMs(env[name], fallback);
}

// k6 duration string for scenario options.
export function k6dur(millis) {
  return `${Math.max(1, Math.ceil(millis))}ms`;
}

function list(value) {
  return String(value || '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

// WebSocket URLs a client starts on (round-robin by user).
export const URLS = list(str('SB_URLS', 'ws://127.0.0.1:8080/ws'));
// Further URLs a client may move to when it reconnects (replacement nodes).
export const FALLBACK_URLS = list(str('SB_FALLBACK_URLS', ''));
// Every URL, in the order a reconnecting client walks through them.
export const ALL_URLS = URLS.concat(FALLBACK_URLS.filter((u) => URLS.indexOf(u) < 0));

// Server API base URLs: SB_API_URLS, or http(s)://host:port of each SB_URLS.
export const API_URLS = env.SB_API_URLS
  ? list(env.SB_API_URLS)
  : URLS.map((u) => {
      const m = /^(ws|wss):\/\/([^/?#]+)/.exec(u);
      if (!m) throw new Error(`not a ws:// or wss:// URL: ${u}`);
      return `${m[1] === 'wss' ? 'https' : 'http'}://${m[2]}`;
    });
export const API_KEY = str('SB_API_KEY', '');

const SECRET = str('SB_JWT_SECRET', '');
const TOKEN_TTL_S = Math.ceil(ms('SB_TOKEN_TTL', '1h') / 1000);
const INSECURE = str('SB_DEV_INSECURE_AUTH', '') === '1';
// SB_TOKENS_FILE: JSON object {"user id": "jwt", ...}; users are then taken
// from it, in its order, instead of being named after the run.
const TOKENS = env.SB_TOKENS_FILE ? JSON.parse(open(env.SB_TOKENS_FILE)) : null;
const TOKEN_USERS = TOKENS ? Object.keys(TOKENS) : null;

if (!SECRET && !TOKENS && !INSECURE) {
  throw new Error('set SB_JWT_SECRET (or SB_TOKENS_FILE, or SB_DEV_INSECURE_AUTH=1)');
}

// ---------------------------------------------------------------------------
// Users and tokens

// Run id: SB_RUN_ID, or one made in setup() and shared with every VU through
// the setup data. It prefixes user ids, so runs never share inboxes.
export function newRunId() {
  return str('SB_RUN_ID', `k6-${Date.now().toString(36)}${Math.floor(Math.random() * 1296).toString(36)}`);
}

// The user id of the n-th (1-based) user of a kind ('u', 'c', 'p') in a run.
export function user(run, kind, n) {
  if (TOKEN_USERS) {
    if (n > TOKEN_USERS.length) {
      throw new Error(`SB_TOKENS_FILE has ${TOKEN_USERS.length} users, ${n} needed`);
    }
    return TOKEN_USERS[n - 1];
  }
  return `${run}-${kind}${n}`;
}

function b64url(s) {
  return encoding.b64encode(s, 'rawurl');
}

// HS256 JWT {"sub": user, "exp": now + SB_TOKEN_TTL}.
export function jwt(sub, secret) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const claims = b64url(JSON.stringify({ sub, exp: Math.floor(Date.now() / 1000) + TOKEN_TTL_S }));
  const sig = crypto.hmac('sha256', secret, `${head}.${claims}`, 'base64rawurl');
  return `${head}.${claims}.${sig}`;
}

// URL and k6/ws params that authenticate as `who`.
export function wsTarget(url, who, tags) {
  const params = { tags: tags || {} };
  if (TOKENS && TOKENS[who]) {
    params.headers = { Authorization: `Bearer ${TOKENS[who]}` };
  } else if (SECRET) {
    params.headers = { Authorization: `Bearer ${jwt(who, SECRET)}` };
  } else {
    url += (url.indexOf('?') < 0 ? '?' : '&') + `user=${encodeURIComponent(who)}`;
  }
  return { url, params };
}

export function apiHeaders() {
  return { Authorization: `Bearer ${API_KEY}` };
}

// ---------------------------------------------------------------------------
// Metrics shared by the scenarios

export const closes1012 = new Counter('sb_closes_1012');
export const closesOther = new Counter('sb_closes_other');
export const connectFailures = new Counter('sb_connect_failures');

// Records a close that this client did not ask for.
export function serverClose(code) {
  if (code === 1012) closes1012.add(1);
  else closesOther.add(1, { code: String(code) });
}

// Gives every listed counter a sample, so thresholds and summaries see it.
export function touch(counters) {
  for (const c of counters) c.add(0);
}

export function pick(arr) {
  return arr[Math.floor(Math.random() * arr.length)];
}

export function sleepUntilMs(t) {
  return Math.max(0, t - Date.now()) / 1000;
}

// ---------------------------------------------------------------------------
// Summary

export const TREND_STATS = ['avg', 'min', 'med', 'p(95)', 'p(99)', 'max'];

export function count(data, name) {
  const m = data.metrics[name];
  return m && m.values.count !== undefined ? m.values.count : 0;
}

export function trend(data, name, stat) {
  const m = data.metrics[name];
  return m && m.values[stat] !== undefined ? m.values[stat] : null;
}

function fmt(v) {
  if (v === null || v === undefined) return '-';
  if (typeof v !== 'number') return String(v);
  if (Number.isInteger(v)) return String(v);
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

function metricLine(name, m) {
  const v = m.values;
  let text;
  if (m.type === 'counter') text = `${fmt(v.count)} (${fmt(v.rate)}/s)`;
  else if (m.type === 'rate') text = `${(v.rate * 100).toFixed(2)}% (${v.passes} of ${v.passes + v.fails})`;
  else if (m.type === 'gauge') text = `${fmt(v.value)} (max ${fmt(v.max)})`;
  else text = TREND_STATS.filter((s) => v[s] !== undefined).map((s) => `${s}=${fmt(v[s])}`).join(' ');
  return `  ${(name + ' ').padEnd(34, '.')} ${text}`;
}

const SHOWN = /^(sb_|checks$|ws_connecting$|ws_sessions$|ws_msgs_|http_reqs$|http_req_duration$|http_req_failed$|vus_max$)/;

// handleSummary body: `report` holds the scenario's own figures (lost, rate,
// latency...), `failures` the reasons to fail that thresholds cannot express.
// Writes a readable text to stdout and, with SB_SUMMARY, a JSON file:
// {scenario, run, ok, thresholds_ok, failures, ...report, thresholds}.
export function summary(data, scenario, report, failures) {
  const thresholds = {};
  let thresholdsOk = true;
  for (const name of Object.keys(data.metrics).sort()) {
    for (const [expr, r] of Object.entries(data.metrics[name].thresholds || {})) {
      thresholds[`${name}: ${expr}`] = r.ok;
      if (!r.ok) thresholdsOk = false;
    }
  }
  const ok = thresholdsOk && failures.length === 0;
  const run = data.setup_data ? data.setup_data.run : null;
  const out = Object.assign({ scenario, run, ok, thresholds_ok: thresholdsOk, failures }, report, { thresholds });

  const lines = [`switchboard k6 ${scenario} (run ${run})`, 'thresholds:'];
  for (const [k, v] of Object.entries(thresholds)) lines.push(`  ${v ? 'ok  ' : 'FAIL'} ${k}`);
  lines.push('metrics:');
  for (const name of Object.keys(data.metrics).sort()) {
    if (SHOWN.test(name)) lines.push(metricLine(name, data.metrics[name]));
  }
  lines.push('figures:');
  for (const [k, v] of Object.entries(report)) lines.push(`  ${(k + ' ').padEnd(34, '.')} ${fmt(v)}`);
  for (const f of failures) lines.push(`FAIL ${f}`);
  lines.push(`result: ${ok ? 'ok' : 'FAILED'}`);

  const files = { stdout: lines.join('\n') + '\n' };
  if (env.SB_SUMMARY) files[env.SB_SUMMARY] = JSON.stringify(out, null, 2) + '\n';
  return files;
}

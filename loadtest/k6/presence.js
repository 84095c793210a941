// Presence: SB_VUS users hold one connection each (round-robin over
// SB_URLS) while presence is queried for them and for users that never
// connect, over WebSocket ({"type":"presence"}) and, with SB_API_KEY, over
// the server API (GET /v1/presence/{user}). Every answer must be right.
import ws from 'k6/ws';
import http from 'k6/http';
import exec from 'k6/execution';
import { check } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import * as sb from './lib/switchboard.js';

const c = {
  vus: sb.num('SB_VUS', 50), // users holding a connection
  wsRate: sb.num('SB_WS_RATE', 50), // WebSocket queries per second, all users together
  apiRate: sb.num('SB_API_RATE', 50), // server API requests per second
  warmup: sb.ms('SB_WARMUP', '2s'),
  duration: sb.ms('SB_DURATION', '5s'),
  p99: sb.num('SB_P99_MS', 500),
  batch: Math.min(100, sb.num('SB_BATCH', 20)), // users per WebSocket query
};
const useApi = sb.API_KEY !== '';

const welcomes = new Counter('sb_welcomes');
const answers = new Counter('sb_presence_answers'); // WebSocket answers
const wrong = new Counter('sb_presence_wrong'); // wrong answers, both ways
const apiAnswers = new Counter('sb_api_answers');
const presenceMs = new Trend('sb_presence_ms', true); // WebSocket query to answer

const scenarios = {
  holders: {
    executor: 'per-vu-iterations',
    vus: c.vus,
    iterations: 1,
    maxDuration: sb.k6dur(c.warmup + c.duration + 30000),
    exec: 'holder',
  },
};
const thresholds = {
  checks: ['rate==1'],
  sb_welcomes: [`count>=${c.vus}`],
  sb_presence_answers: ['count>0'],
  sb_presence_wrong: ['count==0'],
  sb_presence_ms: [`p(99)<${c.p99}`],
  sb_closes_1012: ['count==0'],
  sb_closes_other: ['count==0'],
};
if (useApi) {
  scenarios.api = {
    executor: 'constant-arrival-rate',
    rate: c.apiRate,
    timeUnit: '1s',
    startTime: sb.k6dur(c.warmup),
    duration: sb.k6dur(c.duration),
    preAllocatedVUs: Math.max(2, Math.ceil(c.apiRate / 50)),
    maxVUs: Math.max(10, Math.ceil(c.apiRate / 5)),
    exec: 'api',
  };
  thresholds.sb_api_answers = ['count>0'];
  thresholds['http_req_duration{scenario:api}'] = [`p(99)<${c.p99}`];
  thresholds['http_req_failed{scenario:api}'] = ['rate==0'];
}

export const options = { scenarios, thresholds, summaryTrendStats: sb.TREND_STATS };

export function setup() {
  return { run: sb.newRunId(), start: Date.now() };
}

function online(data, n) {
  return sb.user(data.run, 'p', n);
}

function offline(data, n) {
  return `${data.run}-offline${n}`;
}

// A user holding one connection and sending presence queries.
export function holder(data) {
  const n = exec.scenario.iterationInTest + 1;
  const me = online(data, n);
  const tStart = data.start + c.warmup;
  const tQueryEnd = tStart + c.duration;
  // Stay connected until the API queries (same window) are surely over.
  const tEnd = tQueryEnd + 1500;
  const perVu = c.wsRate / c.vus;
  const tick = Math.min(100, Math.max(10, Math.floor(1000 / perVu)));
  const queue = []; // outstanding queries, answered in order: {t, expect}
  let credit = 0;
  let lastTick = 0;
  let first = true;
  let closing = false;
  sb.touch([welcomes, answers, wrong, apiAnswers, sb.closes1012, sb.closesOther, sb.connectFailures]);

  const target = sb.wsTarget(sb.URLS[(n - 1) % sb.URLS.length], me);
  const res = ws.connect(target.url, target.params, (socket) => {
    const query = (now) => {
      const expect = {};
      const nOn = Math.ceil(c.batch * 0.7);
      for (let i = 0; i < nOn; i++) expect[online(data, 1 + Math.floor(Math.random() * c.vus))] = true;
      for (let i = nOn; i < c.batch; i++) expect[offline(data, 1 + Math.floor(Math.random() * 1000))] = false;
      queue.push({ t: now, expect });
      socket.send(JSON.stringify({ type: 'presence', users: Object.keys(expect) }));
    };
    socket.on('message', (raw) => {
      let f = {};
      try {
        f = JSON.parse(raw);
      } catch (e) {
        // a failed check below
      }
      if (first) {
        first = false;
        if (check(f, { 'first frame is welcome for the user': (w) => w.type === 'welcome' && w.user === me })) {
          welcomes.add(1);
        }
        return;
      }
      if (f.type === 'presence') {
        const q = queue.shift();
        if (!q) return;
        presenceMs.add(Date.now() - q.t);
        answers.add(1);
        const ok = check(f, {
          'ws presence answer right': (a) => {
            const got = a.online || {};
            const keys = Object.keys(q.expect);
            return Object.keys(got).length === keys.length && keys.every((u) => got[u] === q.expect[u]);
          },
        });
        if (!ok) wrong.add(1);
      } else if (f.type === 'error') {
        check(f, { 'no error frames': () => false });
      }
    });
    socket.on('close', (code) => {
      if (!closing) sb.serverClose(code);
    });
    socket.on('error', () => {});
    socket.setInterval(() => {
      const now = Date.now();
      if (first || now < tStart || now >= tQueryEnd) return;
      if (lastTick === 0) lastTick = Math.max(now - tick, tStart);
      credit = Math.min(credit + (perVu * (now - lastTick)) / 1000, perVu + 1);
      lastTick = now;
      while (credit >= 1) {
        credit -= 1;
        query(now);
      }
    }, tick);
    socket.setTimeout(() => {
      closing = true;
      socket.close();
    }, Math.max(1, tEnd - Date.now()));
  });
  if (!res || res.status !== 101) {
    sb.connectFailures.add(1);
    check(res, { 'handshake 101': () => false });
  }
  if (first) check(null, { 'first frame is welcome for the user': () => false });
}

// One server API presence request for a holder or a user never connected.
export function api(data) {
  const i = exec.scenario.iterationInTest;
  const isOnline = Math.random() < 0.7;
  const who = isOnline ? online(data, 1 + Math.floor(Math.random() * c.vus)) : offline(data, 1 + (i % 1000));
  const base = sb.API_URLS[i % sb.API_URLS.length];
  const res = http.get(`${base}/v1/presence/${who}`, { headers: sb.apiHeaders(), tags: { name: 'GET /v1/presence/{user}' } });
  let body = {};
  try {
    body = res.json();
  } catch (e) {
    // a failed check below
  }
  apiAnswers.add(1);
  const ok = check(res, {
    'api presence 200': (r) => r.status === 200,
    'api presence answer right': () =>
      body.user === who && body.online === isOnline && body.connections === (isOnline ? 1 : 0),
  });
  if (!ok) wrong.add(1);
}

export function handleSummary(data) {
  const wsN = sb.count(data, 'sb_presence_answers');
  const apiN = sb.count(data, 'sb_api_answers');
  const report = {
    connections: sb.count(data, 'sb_welcomes'),
    ws_queries: wsN,
    api_queries: apiN,
    queries_per_s: Math.round((wsN + apiN) / (c.duration / 1000)),
    wrong: sb.count(data, 'sb_presence_wrong'),
    p50_ms: sb.trend(data, 'sb_presence_ms', 'med'),
    p95_ms: sb.trend(data, 'sb_presence_ms', 'p(95)'),
    p99_ms: sb.trend(data, 'sb_presence_ms', 'p(99)'),
    api_p99_ms: sb.trend(data, 'http_req_duration', 'p(99)'),
  };
  return sb.summary(data, 'presence', report, []);
}

// Connection storm: ramps up to SB_CONNECTIONS connections over SB_RAMP,
// holds them for SB_HOLD, then closes them. Every connection must get
// `welcome` for its own user as its first frame.
import ws from 'k6/ws';
import { check, sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import * as sb from './lib/switchboard.js';

const c = {
  connections: sb.num('SB_CONNECTIONS', 100),
  ramp: sb.ms('SB_RAMP', '5s'),
  hold: sb.ms('SB_HOLD', '3s'),
  connectP95: sb.num('SB_CONNECT_P95_MS', 1000),
  welcomeP95: sb.num('SB_WELCOME_P95_MS', 2000),
};

const welcomes = new Counter('sb_welcomes');
const welcomeMs = new Trend('sb_welcome_ms', true); // connect start to welcome

export const options = {
  scenarios: {
    storm: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: sb.k6dur(c.ramp), target: c.connections },
        { duration: sb.k6dur(c.hold), target: c.connections },
      ],
      gracefulRampDown: '5s',
      gracefulStop: '10s',
    },
  },
  summaryTrendStats: sb.TREND_STATS,
  thresholds: {
    checks: ['rate==1'],
    sb_welcomes: [`count>=${c.connections}`],
    ws_connecting: [`p(95)<${c.connectP95}`],
    sb_welcome_ms: [`p(95)<${c.welcomeP95}`],
    sb_closes_other: ['count==0'],
    sb_closes_1012: ['count==0'],
  },
};

export function setup() {
  return { run: sb.newRunId(), start: Date.now() };
}

export default function (data) {
  const deadline = data.start + c.ramp + c.hold;
  // No new connection in the last moments: hold until the end instead.
  if (Date.now() > deadline - 250) {
    sleep(sb.sleepUntilMs(deadline + 1000));
    return;
  }
  sb.touch([welcomes, sb.closes1012, sb.closesOther, sb.connectFailures]);
  const me = sb.user(data.run, 'c', __VU);
  const target = sb.wsTarget(sb.URLS[(__VU - 1) % sb.URLS.length], me);
  const t0 = Date.now();
  let first = true;
  let closing = false;
  const res = ws.connect(target.url, target.params, (socket) => {
    socket.on('message', (raw) => {
      if (!first) return;
      first = false;
      let f = {};
      try {
        f = JSON.parse(raw);
      } catch (e) {
        // counted as a failed check below
      }
      welcomeMs.add(Date.now() - t0);
      const ok = check(f, { 'first frame is welcome for the user': (w) => w.type === 'welcome' && w.user === me });
      if (ok) welcomes.add(1);
    });
    socket.on('close', (code) => {
      if (!closing) sb.serverClose(code);
    });
    socket.on('error', () => {});
    // Hold the connection until the end of the test.
    socket.setTimeout(() => {
      closing = true;
      socket.close();
    }, Math.max(1, deadline - Date.now()));
  });
  check(res, { 'handshake 101': (r) => r && r.status === 101 });
  if (!res || res.status !== 101) sb.connectFailures.add(1);
  if (first) check(null, { 'first frame is welcome for the user': () => false });
  // A connection that ended early: pause before the next one.
  if (Date.now() < deadline) sleep(Math.min(1, sb.sleepUntilMs(deadline)));
}

export function handleSummary(data) {
  const report = {
    connections: sb.count(data, 'sb_welcomes'),
    target: c.connections,
    connect_failures: sb.count(data, 'sb_connect_failures'),
    connect_p95_ms: sb.trend(data, 'ws_connecting', 'p(95)'),
    p50_ms: sb.trend(data, 'sb_welcome_ms', 'med'),
    p95_ms: sb.trend(data, 'sb_welcome_ms', 'p(95)'),
    p99_ms: sb.trend(data, 'sb_welcome_ms', 'p(99)'),
    max_ms: sb.trend(data, 'sb_welcome_ms', 'max'),
  };
  return sb.summary(data, 'connect', report, []);
}

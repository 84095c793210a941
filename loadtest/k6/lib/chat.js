// 1:1 chat across nodes, shared by chat.js and rolling-restart.js.
//
// Each VU is one user with one connection at a time. After the warm-up it
// sends at a fixed rate to random other users (users that start on another
// URL when there are several), stops sending after the send window, keeps
// reading for the drain period and closes. It acks every message, measures
// end-to-end latency from the send timestamp in the body, and counts
// accepted sends, unique received messages and duplicates. When its
// connection closes it reconnects to the next URL (backoff on failure) and
// resends, with the same id and recipient, every send not yet accepted.
import ws from 'k6/ws';
import exec from 'k6/execution';
import { check, sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import * as sb from './switchboard.js';

const sent = new Counter('sb_sent'); // sends written the first time
const resent = new Counter('sb_resent'); // sends written again after a reconnect or an error
const accepted = new Counter('sb_accepted'); // distinct sends accepted
const received = new Counter('sb_received'); // distinct messages (msg ids) received
const deliveries = new Counter('sb_deliveries'); // message frames of this run, duplicates included
const duplicates = new Counter('sb_duplicates'); // message frames whose msg id this user had already seen
const gaps = new Counter('sb_gaps'); // per sender: highest sequence number seen minus distinct ones seen
const unconfirmed = new Counter('sb_unconfirmed'); // sends never accepted by the end
const sendErrors = new Counter('sb_send_errors'); // error frames answering a send
const receipts = new Counter('sb_receipts');
const foreign = new Counter('sb_foreign'); // messages not sent by this run (old inbox contents)
const welcomes = new Counter('sb_welcomes');
const reconnects = new Counter('sb_reconnects');
const latency = new Trend('sb_latency_ms', true); // send timestamp to first receipt of the msg id
const acceptMs = new Trend('sb_accept_ms', true); // first write of a send to its accepted

export function config(defaults) {
  const c = {
    vus: sb.num('SB_VUS', defaults.vus),
    rate: sb.num('SB_RATE', defaults.rate), // messages per second, all VUs together
    warmup: sb.ms('SB_WARMUP', defaults.warmup),
    duration: sb.ms('SB_DURATION', defaults.duration),
    drain: sb.ms('SB_DRAIN', defaults.drain),
    p99: sb.num('SB_P99_MS', defaults.p99),
  };
  if (c.vus < 2) throw new Error('SB_VUS must be at least 2');
  return c;
}

export function options(c, extraThresholds) {
  return {
    scenarios: {
      chat: {
        executor: 'per-vu-iterations',
        vus: c.vus,
        iterations: 1,
        maxDuration: sb.k6dur(c.warmup + c.duration + c.drain + 30000),
        gracefulStop: '5s',
      },
    },
    summaryTrendStats: sb.TREND_STATS,
    thresholds: Object.assign(
      {
        checks: ['rate==1'],
        sb_latency_ms: [`p(99)<${c.p99}`],
        sb_unconfirmed: ['count==0'],
        sb_gaps: ['count==0'],
        sb_received: ['count>0'],
        sb_welcomes: [`count>=${c.vus}`],
      },
      extraThresholds,
    ),
  };
}

export function setup() {
  return { run: sb.newRunId(), start: Date.now() };
}

// Per-VU state; it outlives reconnections.
const st = {
  seen: {}, // msg id -> 1
  pending: new Map(), // send id -> {frame, t, tries}
  seq: 0,
  toSeq: {}, // recipient -> last sequence number sent to it
  fromSeq: {}, // sender -> {n: distinct messages, max: highest sequence number}
};

export function run(data, c) {
  const vu = exec.vu.idInTest;
  const me = sb.user(data.run, 'u', vu);
  const home = (vu - 1) % sb.URLS.length;
  const all = sb.ALL_URLS;
  let urlIdx = all.indexOf(sb.URLS[home]);

  // Recipients: every other user, those starting on another URL if any.
  const others = [];
  const remote = [];
  for (let j = 1; j <= c.vus; j++) {
    if (j === vu) continue;
    others.push(sb.user(data.run, 'u', j));
    if ((j - 1) % sb.URLS.length !== home) remote.push(sb.user(data.run, 'u', j));
  }
  const targets = remote.length > 0 ? remote : others;

  const tStart = data.start + c.warmup;
  const tSendEnd = tStart + c.duration;
  const tEnd = tSendEnd + c.drain;
  const perVu = c.rate / c.vus; // messages per second from this VU
  const tick = Math.min(100, Math.max(10, Math.floor(1000 / perVu)));
  let credit = 0;
  let lastTick = 0;

  sb.touch([sent, resent, accepted, received, deliveries, duplicates, gaps, unconfirmed, sendErrors,
    receipts, foreign, welcomes, reconnects, sb.closes1012, sb.closesOther, sb.connectFailures]);

  let failuresInRow = 0;
  for (let attempt = 0; attempt < 1000 && Date.now() < tEnd; attempt++) {
    if (attempt > 0) reconnects.add(1);
    let welcomed = false;
    let closing = false;
    const target = sb.wsTarget(all[urlIdx], me, { scenario_user: 'chat' });

    const res = ws.connect(target.url, target.params, (socket) => {
      const write = (id, p) => {
        socket.send(p.frame);
        p.tries++;
      };

      const sendOne = (now) => {
        const to = sb.pick(targets);
        const k = (st.toSeq[to] = (st.toSeq[to] || 0) + 1);
        const id = `${me}.${++st.seq}`;
        const frame = JSON.stringify({ type: 'send', id, to, body: { r: data.run, s: me, k, t: now } });
        const p = { frame, t: now, tries: 0 };
        st.pending.set(id, p);
        write(id, p);
        sent.add(1);
      };

      socket.on('message', (raw) => {
        let f;
        try {
          f = JSON.parse(raw);
        } catch (e) {
          f = { type: 'unparsable' };
        }
        if (!welcomed) {
          welcomed = true;
          const ok = check(f, { 'first frame is welcome for the user': (w) => w.type === 'welcome' && w.user === me });
          if (!ok) {
            closing = true;
            socket.close();
            return;
          }
          welcomes.add(1);
          failuresInRow = 0;
          // Resend what was not accepted on the previous connection.
          for (const [id, p] of st.pending) {
            write(id, p);
            resent.add(1);
          }
          return;
        }
        const now = Date.now();
        switch (f.type) {
          case 'message': {
            socket.send(JSON.stringify({ type: 'ack', msg: f.msg }));
            const b = f.body;
            if (!b || b.r !== data.run) {
              foreign.add(1);
              return;
            }
            deliveries.add(1);
            if (st.seen[f.msg]) {
              duplicates.add(1);
              return;
            }
            st.seen[f.msg] = 1;
            received.add(1);
            latency.add(now - b.t);
            const s = st.fromSeq[b.s] || (st.fromSeq[b.s] = { n: 0, max: 0 });
            s.n++;
            if (b.k > s.max) s.max = b.k;
            return;
          }
          case 'accepted': {
            const p = st.pending.get(f.id);
            if (p) {
              st.pending.delete(f.id);
              accepted.add(1);
              acceptMs.add(now - p.t);
            }
            return;
          }
          case 'receipt':
            receipts.add(1);
            return;
          case 'error': {
            sendErrors.add(1, { code: String(f.code) });
            const p = f.id && st.pending.get(f.id);
            // Resend refused sends (rate_limited, internal) a few times.
            if (p && p.tries < 5) {
              socket.setTimeout(() => {
                if (st.pending.get(f.id) === p) {
                  write(f.id, p);
                  resent.add(1);
                }
              }, 200 * p.tries);
            }
            return;
          }
          default:
            return;
        }
      });

      socket.on('close', (code) => {
        if (!closing) sb.serverClose(code);
      });

      socket.on('error', () => {});

      socket.setInterval(() => {
        if (!welcomed) return;
        const now = Date.now();
        if (now < tStart || now >= tSendEnd) {
          lastTick = 0;
          return;
        }
        if (lastTick === 0) lastTick = Math.max(now - tick, tStart);
        credit = Math.min(credit + (perVu * (now - lastTick)) / 1000, perVu + 1);
        lastTick = now;
        while (credit >= 1) {
          credit -= 1;
          sendOne(now);
        }
      }, tick);

      socket.setTimeout(() => {
        closing = true;
        socket.close();
      }, Math.max(1, tEnd - Date.now()));
    });

    if (!res || res.status !== 101) sb.connectFailures.add(1, { url: all[urlIdx] });
    if (Date.now() >= tEnd) break;
    // Reconnect to the next URL: at once after a working connection (with a
    // little jitter), with exponential backoff after failed attempts.
    if (!welcomed) failuresInRow++;
    urlIdx = (urlIdx + 1) % all.length;
    lastTick = 0;
    const pause = failuresInRow === 0 ? 0.05 : Math.min(2, 0.05 * Math.pow(2, failuresInRow));
    sleep(Math.min(pause * (0.5 + Math.random()), sb.sleepUntilMs(tEnd)));
  }

  unconfirmed.add(st.pending.size);
  let g = 0;
  for (const s of Object.values(st.fromSeq)) if (s.max > s.n) g += s.max - s.n;
  gaps.add(g);
}

// Loss: accepted sends that no recipient received (k6 thresholds cannot
// subtract one counter from another, so this is computed here and checked by
// the runner from the JSON summary).
export function summary(data, scenario, c, opts) {
  const acc = sb.count(data, 'sb_accepted');
  const rec = sb.count(data, 'sb_received');
  const report = {
    connections: sb.count(data, 'sb_welcomes'),
    reconnects: sb.count(data, 'sb_reconnects'),
    closes_1012: sb.count(data, 'sb_closes_1012'),
    sent: sb.count(data, 'sb_sent'),
    accepted: acc,
    received: rec,
    lost: Math.max(0, acc - rec),
    unexpected: Math.max(0, rec - acc),
    duplicates: sb.count(data, 'sb_duplicates'),
    deliveries: sb.count(data, 'sb_deliveries'),
    gaps: sb.count(data, 'sb_gaps'),
    unconfirmed: sb.count(data, 'sb_unconfirmed'),
    send_errors: sb.count(data, 'sb_send_errors'),
    msgs_per_s: Math.round(acc / (c.duration / 1000)),
    p50_ms: sb.trend(data, 'sb_latency_ms', 'med'),
    p95_ms: sb.trend(data, 'sb_latency_ms', 'p(95)'),
    p99_ms: sb.trend(data, 'sb_latency_ms', 'p(99)'),
    max_ms: sb.trend(data, 'sb_latency_ms', 'max'),
  };
  const failures = [];
  if (report.lost > 0) failures.push(`lost ${report.lost} of ${acc} accepted messages`);
  if (report.unexpected > 0) failures.push(`received ${report.unexpected} more distinct messages than were accepted`);
  if (opts && opts.noDuplicates && report.duplicates > 0) failures.push(`${report.duplicates} duplicate deliveries`);
  return sb.summary(data, scenario, report, failures);
}

// The chat scenario while the nodes are restarted one by one (by
// scripts/k6 locally, by you against a deployment). Clients closed with 1012
// reconnect to the next URL and resend what was not accepted; the nodes
// replay unacked messages from the inbox (durable mode). Duplicates are
// allowed and counted; no accepted message may be lost.
import * as chat from './lib/chat.js';

const c = chat.config({ vus: 20, rate: 200, warmup: '2s', duration: '15s', drain: '4s', p99: 10000 });

export const options = chat.options(c, {
  // The restarts must really have closed connections.
  sb_closes_1012: ['count>0'],
  sb_closes_other: ['count==0'],
});

export const setup = chat.setup;

export default function (data) {
  chat.run(data, c);
}

export function handleSummary(data) {
  return chat.summary(data, 'rolling-restart', c, { noDuplicates: false });
}

// The frames of Switchboard's client protocol (docs/protocol.md) as
// TypeScript types, with the close codes and id rules the client acts on.
// The JSON encoding is the only one spoken here: it is what browsers and
// mini-programs send as text frames without a codec of their own.

/** Any value JSON can express: the `body` of a message. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** The subprotocol this client offers: JSON objects in text frames. */
export const SUBPROTOCOL = 'switchboard.v1.json';

/** The close codes the server sends, by meaning. */
export const CloseCode = {
  /** Nothing arrived from the client for 2.5 heartbeats. */
  IdleTimeout: 1000,
  /** A frame broke the WebSocket protocol. */
  ProtocolError: 1002,
  /** The client kept sending after being refused by the rate limit. */
  RateLimitExceeded: 1008,
  /** A frame was larger than the node's `--max-frame-bytes`. */
  FrameTooLarge: 1009,
  /** The node could not register the connection (Redis unreachable). */
  InternalError: 1011,
  /** The node is draining: reconnect, to another node where there is one. */
  NodeRestarting: 1012,
  /** The connection fell too far behind (slow consumer): reconnect later. */
  TryAgainLater: 1013,
  /** Not sent by anyone: the connection failed or could not be opened. */
  Abnormal: 1006,
} as const;

/** First frame of every connection. */
export interface Welcome {
  type: 'welcome';
  user: string;
  conn: string;
  node: string;
  heartbeat_ms: number;
  epoch: string;
}

/** The node took responsibility for a send. */
export interface Accepted {
  type: 'accepted';
  /** The client's id of the send. */
  id: string;
  /** The message id the server assigned (UUID v7). */
  msg: string;
  /** `routed`: on its way to a live connection; `stored`: waiting in the inbox. */
  status: 'routed' | 'stored';
}

/** A message for this connection's user. */
export interface Message {
  type: 'message';
  msg: string;
  from: string;
  to: string;
  body: Json;
  /** When the accepting node received it, in milliseconds since the Unix epoch. */
  ts: number;
}

/** The recipient acked one of this user's messages. */
export interface Receipt {
  type: 'receipt';
  /** The sender's id of the send. */
  id: string;
  msg: string;
  status: 'delivered';
}

/** Answer to a presence query: each queried user once. */
export interface PresenceAnswer {
  type: 'presence';
  online: Record<string, boolean>;
}

export interface Pong {
  type: 'pong';
}

/** A frame was refused; `id` is there when it refers to a send. */
export interface ErrorFrame {
  type: 'error';
  id?: string;
  code: string;
  message: string;
}

export type ServerFrame = Welcome | Accepted | Message | Receipt | PresenceAnswer | Pong | ErrorFrame;

export type ClientFrame =
  | { type: 'send'; id: string; to: string; body: Json }
  | { type: 'ack'; msg: string }
  | { type: 'ping' }
  | { type: 'presence'; users: string[] };

/** At most this many users in one presence query. */
export const MAX_PRESENCE_USERS = 100;

const USER_ID = /^[A-Za-z0-9_.:@-]{1,128}$/;

/** Whether `user` is a valid user id: 1 to 128 bytes of `A-Z a-z 0-9 _ . : @ -`. */
export function isUserId(user: string): boolean {
  return USER_ID.test(user);
}

/** The length of `text` in UTF-8 bytes (send ids are limited in bytes). */
export function utf8Length(text: string): number {
  let bytes = 0;
  for (const char of text) {
    const code = char.codePointAt(0) ?? 0;
    bytes += code < 0x80 ? 1 : code < 0x800 ? 2 : code < 0x10000 ? 3 : 4;
  }
  return bytes;
}

/**
 * A failure the client reports: the server's error code (`rate_limited`,
 * `invalid_recipient`...) or one of the client's own:
 * `client_closed` (the client was closed before an answer came),
 * `duplicate_id` (a send with this id is still pending),
 * `frame_too_large` (the node closed the connection with 1009 on this send),
 * `token_failed` (the token callback threw),
 * `transport_failed` (the transport could not open a socket),
 * `unreadable_frame` (the server sent something that is not a JSON frame).
 */
export class SwitchboardError extends Error {
  readonly code: string;

  constructor(code: string, message: string) {
    super(message);
    this.name = 'SwitchboardError';
    this.code = code;
  }
}

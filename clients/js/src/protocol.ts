// The frames of Switchboard's client protocol (docs/protocol.md) as
// TypeScript types, with the close codes and id rules the client acts on.

/** Any value JSON can express: the `body` of a message. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** The JSON subprotocol: JSON objects in text frames. */
export const SUBPROTOCOL = 'switchboard.v1.json';

/** The MessagePack subprotocol: the same objects as MessagePack maps in binary frames. */
export const MSGPACK_SUBPROTOCOL = 'switchboard.v1.msgpack';

/** The prefix of the subprotocol entry that carries a token (browsers cannot set headers). */
export const TOKEN_SUBPROTOCOL_PREFIX = 'switchboard.token.';

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
  /** The connection's token expired: reconnect with a fresh one. */
  TokenExpired: 4001,
  /** The application backend disconnected this user (`POST /v1/disconnect`): do not reconnect. */
  Disconnected: 4003,
} as const;

/** First frame of every connection. */
export interface Welcome {
  type: 'welcome';
  user: string;
  conn: string;
  node: string;
  heartbeat_ms: number;
  epoch: string;
  /** The connection's device. */
  device?: string;
  /** The user's latest seq: the replay that follows ends there. */
  seq?: number;
  /** When the connection's token expires, in seconds since the Unix epoch. */
  exp?: number;
}

/** What one recipient's part of a send became. */
export type DeliveryStatus = 'routed' | 'stored' | 'offline';

/** The node took responsibility for a send. */
export interface Accepted {
  type: 'accepted';
  /** The client's id of the send. */
  id: string;
  /** The message id the server assigned (UUID v7). */
  msg: string;
  /**
   * `routed`: on its way to a live connection of a recipient; `stored`:
   * waiting in the log; `offline` (ephemeral sends): nobody was reached.
   */
  status: DeliveryStatus;
  /** For a send to a list: each recipient's own status. */
  recipients?: Record<string, DeliveryStatus>;
}

/** A message for this connection's user. */
export interface Message {
  type: 'message';
  msg: string;
  from: string;
  /** The recipient this frame is for. */
  to: string;
  body: Json;
  /** When the accepting node received it, in milliseconds since the Unix epoch. */
  ts: number;
  /** Its place in the recipient's log; absent for a live-only message (fast mode, ephemeral). */
  seq?: number;
}

/** A recipient acked one of this user's messages. */
export interface Receipt {
  type: 'receipt';
  /** The sender's id of the send. */
  id: string;
  msg: string;
  status: 'delivered';
  /** For a send to a list: the recipient who acked. */
  user?: string;
}

/** Answer to a presence query: each queried user once. */
export interface PresenceAnswer {
  type: 'presence';
  online: Record<string, boolean>;
}

export interface Pong {
  type: 'pong';
}

/** Answer to a `refresh`: the connection now lasts until `exp`. */
export interface Refreshed {
  type: 'refreshed';
  exp: number;
}

/** A frame was refused; `id` is there when it refers to a send. */
export interface ErrorFrame {
  type: 'error';
  id?: string;
  code: string;
  message: string;
}

export type ServerFrame = Welcome | Accepted | Message | Receipt | PresenceAnswer | Pong | Refreshed | ErrorFrame;

export type ClientFrame =
  | { type: 'send'; id: string; to: string | string[]; body: Json; ephemeral?: true }
  | { type: 'ack'; msg: string }
  | { type: 'ack'; seq: number }
  | { type: 'ping' }
  | { type: 'presence'; users: string[] }
  | { type: 'refresh'; token: string };

/** At most this many users in one presence query. */
export const MAX_PRESENCE_USERS = 100;

const ID = /^[A-Za-z0-9_.:@-]+$/;

/** Whether `user` is a valid user id: 1 to 128 bytes of `A-Z a-z 0-9 _ . : @ -`. */
export function isUserId(user: string): boolean {
  return user.length <= 128 && ID.test(user);
}

/** Whether `device` is a valid device id: 1 to 64 bytes of `A-Z a-z 0-9 _ . : @ -`. */
export function isDeviceId(device: string): boolean {
  return device.length <= 64 && ID.test(device);
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
 * `invalid_recipient`, `bad_token`...) or one of the client's own:
 * `client_closed` (the client was closed before an answer came),
 * `connection_lost` (an ephemeral send whose connection ended unanswered),
 * `disconnected` (the backend disconnected the user: close 4003),
 * `duplicate_id` (a send with this id is still pending),
 * `frame_too_large` (the node closed the connection with 1009 on this send),
 * `not_connected` (an ephemeral send while no connection is open),
 * `token_failed` (the token callback threw),
 * `transport_failed` (the transport could not open a socket),
 * `unreadable_frame` (the server sent something that is not a frame).
 */
export class SwitchboardError extends Error {
  readonly code: string;

  constructor(code: string, message: string) {
    super(message);
    this.name = 'SwitchboardError';
    this.code = code;
  }
}

/** How frames are written and read: JSON in text frames, or MessagePack in binary frames. */
export interface Codec {
  /** The subprotocol that names this encoding. */
  readonly protocol: string;
  encode(frame: object): string | Uint8Array;
  /** Reads a frame: text frames are JSON whatever the codec, binary frames MessagePack. */
  decode(data: string | ArrayBuffer): unknown;
}

export const jsonCodec: Codec = {
  protocol: SUBPROTOCOL,
  encode: (frame) => JSON.stringify(frame),
  decode(data) {
    if (typeof data !== 'string') throw new TypeError('a binary frame on a JSON connection');
    return JSON.parse(data) as unknown;
  },
};

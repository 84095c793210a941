/** Any value JSON can express: the `body` of a message. */
export type Json = null | boolean | number | string | Json[] | {
    [key: string]: Json;
};
/** The subprotocol this client offers: JSON objects in text frames. */
export declare const SUBPROTOCOL = "switchboard.v1.json";
/** The close codes the server sends, by meaning. */
export declare const CloseCode: {
    /** Nothing arrived from the client for 2.5 heartbeats. */
    readonly IdleTimeout: 1000;
    /** A frame broke the WebSocket protocol. */
    readonly ProtocolError: 1002;
    /** The client kept sending after being refused by the rate limit. */
    readonly RateLimitExceeded: 1008;
    /** A frame was larger than the node's `--max-frame-bytes`. */
    readonly FrameTooLarge: 1009;
    /** The node could not register the connection (Redis unreachable). */
    readonly InternalError: 1011;
    /** The node is draining: reconnect, to another node where there is one. */
    readonly NodeRestarting: 1012;
    /** The connection fell too far behind (slow consumer): reconnect later. */
    readonly TryAgainLater: 1013;
    /** Not sent by anyone: the connection failed or could not be opened. */
    readonly Abnormal: 1006;
};
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
export type ClientFrame = {
    type: 'send';
    id: string;
    to: string;
    body: Json;
} | {
    type: 'ack';
    msg: string;
} | {
    type: 'ping';
} | {
    type: 'presence';
    users: string[];
};
/** At most this many users in one presence query. */
export declare const MAX_PRESENCE_USERS = 100;
/** Whether `user` is a valid user id: 1 to 128 bytes of `A-Z a-z 0-9 _ . : @ -`. */
export declare function isUserId(user: string): boolean;
/** The length of `text` in UTF-8 bytes (send ids are limited in bytes). */
export declare function utf8Length(text: string): number;
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
export declare class SwitchboardError extends Error {
    readonly code: string;
    constructor(code: string, message: string);
}

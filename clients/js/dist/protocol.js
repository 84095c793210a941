// The frames of Switchboard's client protocol (docs/protocol.md) as
// TypeScript types, with the close codes and id rules the client acts on.
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
};
/** At most this many users in one presence query. */
export const MAX_PRESENCE_USERS = 100;
const ID = /^[A-Za-z0-9_.:@-]+$/;
/** Whether `user` is a valid user id: 1 to 128 bytes of `A-Z a-z 0-9 _ . : @ -`. */
export function isUserId(user) {
    return user.length <= 128 && ID.test(user);
}
/** Whether `device` is a valid device id: 1 to 64 bytes of `A-Z a-z 0-9 _ . : @ -`. */
export function isDeviceId(device) {
    return device.length <= 64 && ID.test(device);
}
/** The length of `text` in UTF-8 bytes (send ids are limited in bytes). */
export function utf8Length(text) {
    var _a;
    let bytes = 0;
    for (const char of text) {
        const code = (_a = char.codePointAt(0)) !== null && _a !== void 0 ? _a : 0;
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
    constructor(code, message) {
        super(message);
        this.name = 'SwitchboardError';
        this.code = code;
    }
}
export const jsonCodec = {
    protocol: SUBPROTOCOL,
    encode: (frame) => JSON.stringify(frame),
    decode(data) {
        if (typeof data !== 'string')
            throw new TypeError('a binary frame on a JSON connection');
        return JSON.parse(data);
    },
};

// The MessagePack codec (`switchboard.v1.msgpack`): the same frames as
// MessagePack maps in binary frames, which cut bandwidth on mobile. Kept
// out of the main module: the client imports this file, and with it
// @msgpack/msgpack, only when `codec: 'msgpack'` is chosen.
import { decode, encode } from '@msgpack/msgpack';
import { MSGPACK_SUBPROTOCOL } from './protocol.js';
export const msgpackCodec = {
    protocol: MSGPACK_SUBPROTOCOL,
    encode: (frame) => encode(frame),
    decode: (data) => (typeof data === 'string' ? JSON.parse(data) : decode(new Uint8Array(data))),
};

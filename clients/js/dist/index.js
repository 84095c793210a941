// @switchboard/client: a Switchboard client for browsers and mini-programs
// (WeChat, uni-app, Taro). See docs/clients.md in the Switchboard repository.
// The MessagePack codec is `@switchboard/client/msgpack` (`./msgpack.js`).
export { SwitchboardClient, TYPING_BODY, } from './client.js';
export { CloseCode, MSGPACK_SUBPROTOCOL, SUBPROTOCOL, SwitchboardError, TOKEN_SUBPROTOCOL_PREFIX, isDeviceId, isUserId, jsonCodec, } from './protocol.js';
export { browserTransport, defaultLifecycle, defaultStorage, defaultTransport, miniProgramStorage, taroTransport, uniTransport, wxTransport, } from './transports.js';

// @switchboard/client: a Switchboard client for browsers and WeChat
// mini-programs. See docs/clients.md in the Switchboard repository.
export { SwitchboardClient, } from './client.js';
export { CloseCode, SUBPROTOCOL, SwitchboardError, isUserId, } from './protocol.js';
export { browserTransport, defaultTransport, wxTransport, } from './transports.js';

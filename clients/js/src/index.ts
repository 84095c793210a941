// @switchboard/client: a Switchboard client for browsers and WeChat
// mini-programs. See docs/clients.md in the Switchboard repository.

export {
  SwitchboardClient,
  type ClientEvents,
  type ClientOptions,
  type ConnectionState,
  type Disconnect,
  type EpochChange,
  type HeartbeatOptions,
  type ReconnectOptions,
  type SendOptions,
} from './client.js';
export {
  CloseCode,
  SUBPROTOCOL,
  SwitchboardError,
  isUserId,
  type Accepted,
  type ClientFrame,
  type ErrorFrame,
  type Json,
  type Message,
  type PresenceAnswer,
  type Receipt,
  type ServerFrame,
  type Welcome,
} from './protocol.js';
export {
  browserTransport,
  defaultTransport,
  wxTransport,
  type ConnectRequest,
  type Transport,
  type TransportEvents,
  type TransportFactory,
  type WebSocketConstructor,
  type WxSocketApi,
  type WxSocketTask,
} from './transports.js';

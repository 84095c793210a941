/** What the client asks a transport to open. */
export interface ConnectRequest {
    /** The WebSocket URL, with `?user=` already added for development auth. */
    url: string;
    /** The JWT for this attempt, when the client has one. */
    token?: string;
    /** The subprotocol to offer. */
    protocol: string;
}
/**
 * What a transport reports. `close` is called once per connection, whether
 * it was closed by the server, failed, or could not be opened, and never
 * after the client itself called `Transport.close`.
 */
export interface TransportEvents {
    message(text: string): void;
    close(code: number, reason: string): void;
}
/** One connection. */
export interface Transport {
    /** Writes a text frame. A failed write is reported through `close`, never thrown. */
    send(text: string): void;
    close(code: number, reason: string): void;
}
/** Opens a connection and reports what happens to it through `events`. */
export type TransportFactory = (request: ConnectRequest, events: TransportEvents) => Transport;
/**
 * `url` with `name=value` added to its query string, without a fragment
 * (a WebSocket URL has none). No `URL` class: mini-programs have none.
 */
export declare function withQuery(url: string, name: string, value: string): string;
/** The constructor of a standard `WebSocket`. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocket;
/**
 * The browser's `WebSocket` (also Node's, from version 22 or with
 * `--experimental-websocket`). The token travels as `?token=`.
 */
export declare function browserTransport(WebSocketClass?: WebSocketConstructor): TransportFactory;
/** The part of a mini-program's `wx` this client uses. */
export interface WxSocketApi {
    connectSocket(options: {
        url: string;
        header?: Record<string, string>;
        protocols?: string[];
        tcpNoDelay?: boolean;
        fail?: (result: {
            errMsg: string;
        }) => void;
    }): WxSocketTask;
}
/** A mini-program's `SocketTask`. */
export interface WxSocketTask {
    send(options: {
        data: string;
        fail?: (result: {
            errMsg: string;
        }) => void;
    }): void;
    close(options: {
        code?: number;
        reason?: string;
    }): void;
    onMessage(callback: (result: {
        data: string | ArrayBuffer;
    }) => void): void;
    onClose(callback: (result: {
        code: number;
        reason: string;
    }) => void): void;
    onError(callback: (result: {
        errMsg: string;
    }) => void): void;
}
/**
 * A WeChat mini-program's socket task (`wx.connectSocket`). The token
 * travels in the `Authorization` header. Pass the `wx` object; it defaults
 * to the global one.
 */
export declare function wxTransport(wxApi?: WxSocketApi): TransportFactory;
/** The browser transport where there is a global `WebSocket`, else the mini-program one. */
export declare function defaultTransport(): TransportFactory;

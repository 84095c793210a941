// How the client reaches a socket. The client speaks only to `Transport`,
// so one client runs over the browser's `WebSocket` and over a WeChat
// mini-program's socket task alike, and a test can hand it a fake. The two
// platforms differ in how they carry the token: a browser cannot set
// headers on a WebSocket, so it goes in `?token=`; a mini-program sets
// `Authorization: Bearer`, which keeps the token out of URLs and logs.
import { CloseCode } from './protocol.js';
/**
 * `url` with `name=value` added to its query string, without a fragment
 * (a WebSocket URL has none). No `URL` class: mini-programs have none.
 */
export function withQuery(url, name, value) {
    const hash = url.indexOf('#');
    const base = hash < 0 ? url : url.slice(0, hash);
    const separator = base.includes('?') ? '&' : '?';
    return `${base}${separator}${name}=${encodeURIComponent(value)}`;
}
/**
 * Guards a transport's reports: `close` reaches the client at most once,
 * and nothing does after the client closed the connection itself.
 */
function reporter(events) {
    let done = false;
    return {
        message: (text) => done || events.message(text),
        close(code, reason) {
            if (done)
                return;
            done = true;
            events.close(code, reason);
        },
        /** The client closed the connection: report nothing more. */
        silence() {
            done = true;
        },
    };
}
/**
 * The browser's `WebSocket` (also Node's, from version 22 or with
 * `--experimental-websocket`). The token travels as `?token=`.
 */
export function browserTransport(WebSocketClass) {
    return (request, events) => {
        const Socket = WebSocketClass !== null && WebSocketClass !== void 0 ? WebSocketClass : globalThis.WebSocket;
        if (!Socket)
            throw new TypeError('no WebSocket here: pass a transport to the client');
        const url = request.token === undefined ? request.url : withQuery(request.url, 'token', request.token);
        const report = reporter(events);
        const socket = new Socket(url, [request.protocol]);
        socket.onmessage = (event) => {
            if (typeof event.data === 'string')
                report.message(event.data);
        };
        socket.onclose = (event) => report.close(event.code, event.reason);
        // An error means the connection failed (1006). A browser follows it
        // with a close event; Node 20's WebSocket, when the upgrade is
        // refused, does not.
        socket.onerror = () => report.close(CloseCode.Abnormal, 'connection failed');
        return {
            send: (text) => socket.send(text),
            close(code, reason) {
                report.silence();
                socket.close(code, reason);
            },
        };
    };
}
/**
 * A WeChat mini-program's socket task (`wx.connectSocket`). The token
 * travels in the `Authorization` header. Pass the `wx` object; it defaults
 * to the global one.
 */
export function wxTransport(wxApi) {
    return (request, events) => {
        const api = wxApi !== null && wxApi !== void 0 ? wxApi : globalThis.wx;
        if (!api)
            throw new TypeError('no wx here: pass the mini-program wx object to wxTransport');
        const report = reporter(events);
        const header = {};
        if (request.token !== undefined)
            header.Authorization = `Bearer ${request.token}`;
        const task = api.connectSocket({
            url: request.url,
            header,
            protocols: [request.protocol],
            tcpNoDelay: true,
            fail: failed,
        });
        // Called by wx after connectSocket returned, never during it.
        function failed(result) {
            report.close(CloseCode.Abnormal, result.errMsg);
            task.close({});
        }
        task.onMessage((result) => {
            if (typeof result.data === 'string')
                report.message(result.data);
        });
        task.onClose((result) => report.close(result.code, result.reason));
        task.onError(failed);
        return {
            // A write that fails leaves the connection unusable: the client
            // reconnects and writes again what is still unanswered.
            send: (text) => task.send({ data: text, fail: failed }),
            close(code, reason) {
                report.silence();
                task.close({ code, reason });
            },
        };
    };
}
/** The browser transport where there is a global `WebSocket`, else the mini-program one. */
export function defaultTransport() {
    const scope = globalThis;
    if (scope.WebSocket === undefined && scope.wx !== undefined)
        return wxTransport(scope.wx);
    return browserTransport();
}

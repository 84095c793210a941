// How the client reaches a socket, where it keeps what must survive a
// restart, and how it hears about the app's lifecycle. The client speaks
// only to these interfaces, so one client runs in a browser and in a
// mini-program (WeChat, uni-app, Taro) alike, and a test can hand it fakes.
//
// The platforms differ in how they carry the token: a browser cannot set
// headers on a WebSocket, so it goes in the subprotocol list
// (`switchboard.token.<JWT>`, never in the URL); a mini-program sets
// `Authorization: Bearer`.
import { CloseCode, TOKEN_SUBPROTOCOL_PREFIX } from './protocol.js';
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
        message: (data) => done || events.message(data),
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
 * `--experimental-websocket`). The token travels in the subprotocol list,
 * beside the codec's protocol, so it appears in no URL; the server never
 * echoes it.
 */
export function browserTransport(WebSocketClass) {
    return (request, events) => {
        const Socket = WebSocketClass !== null && WebSocketClass !== void 0 ? WebSocketClass : globalThis.WebSocket;
        if (!Socket)
            throw new TypeError('no WebSocket here: pass a transport to the client');
        const protocols = [request.protocol];
        if (request.token !== undefined)
            protocols.push(TOKEN_SUBPROTOCOL_PREFIX + request.token);
        const report = reporter(events);
        const socket = new Socket(request.url, protocols);
        socket.binaryType = 'arraybuffer';
        socket.onmessage = (event) => {
            if (typeof event.data === 'string' || event.data instanceof ArrayBuffer)
                report.message(event.data);
        };
        socket.onclose = (event) => report.close(event.code, event.reason);
        // An error means the connection failed (1006). A browser follows it
        // with a close event; Node 20's WebSocket, when the upgrade is
        // refused, does not.
        socket.onerror = () => report.close(CloseCode.Abnormal, 'connection failed');
        return {
            send: (data) => socket.send(data),
            close(code, reason) {
                report.silence();
                socket.close(code, reason);
            },
        };
    };
}
/** A socket task's data: an `ArrayBuffer` for binary frames. */
function taskData(data) {
    if (typeof data === 'string')
        return data;
    return data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
}
/**
 * A transport over `connectSocket` of a mini-program framework, whose task
 * comes at once (WeChat, uni-app) or as a promise (Taro). The token travels
 * in the `Authorization` header.
 */
function socketTaskTransport(name, api) {
    return (request, events) => {
        const platform = api();
        if (!platform)
            throw new TypeError(`no ${name} here: pass the ${name} object to the transport`);
        const report = reporter(events);
        const header = {};
        if (request.token !== undefined)
            header.Authorization = `Bearer ${request.token}`;
        let task;
        /** Set when the client closed before a promised task came. */
        let closing;
        // Called by the platform after connectSocket returned, never during it.
        function failed(result) {
            report.close(CloseCode.Abnormal, result.errMsg);
            task === null || task === void 0 ? void 0 : task.close({});
        }
        function attach(socket) {
            task = socket;
            if (closing) {
                socket.close(closing);
                return;
            }
            socket.onMessage((result) => report.message(result.data));
            socket.onClose((result) => report.close(result.code, result.reason));
            socket.onError(failed);
        }
        // `fail` (and, for uni-app, any callback at all) makes connectSocket
        // return the task rather than a promise of nothing.
        const opened = platform.connectSocket({
            url: request.url,
            header,
            protocols: [request.protocol],
            tcpNoDelay: true,
            fail: failed,
            complete: () => undefined,
        });
        if (opened instanceof Promise)
            opened.then(attach, (error) => failed({ errMsg: String(error) }));
        else
            attach(opened);
        return {
            // A write that fails leaves the connection unusable: the client
            // reconnects and writes again what is still unanswered. Nothing is
            // written before the server's welcome, so a promised task is there.
            send: (data) => task === null || task === void 0 ? void 0 : task.send({ data: taskData(data), fail: failed }),
            close(code, reason) {
                report.silence();
                if (task)
                    task.close({ code, reason });
                else
                    closing = { code, reason };
            },
        };
    };
}
/** A WeChat mini-program's socket task (`wx.connectSocket`). Pass `wx`; it defaults to the global one. */
export function wxTransport(wxApi) {
    return socketTaskTransport('wx', () => wxApi !== null && wxApi !== void 0 ? wxApi : globalThis.wx);
}
/** A uni-app socket task (`uni.connectSocket`). Pass `uni`; it defaults to the global one. */
export function uniTransport(uniApi) {
    return socketTaskTransport('uni', () => uniApi !== null && uniApi !== void 0 ? uniApi : globalThis.uni);
}
/** A Taro socket task (`Taro.connectSocket`, which answers a promise). Pass the `Taro` object. */
export function taroTransport(taroApi) {
    return socketTaskTransport('Taro', () => taroApi);
}
/** The browser transport where there is a global `WebSocket`, else the WeChat one. */
export function defaultTransport() {
    if (miniProgram() !== undefined)
        return wxTransport(miniProgram());
    return browserTransport();
}
/** The global `wx` of a mini-program, where there is no `WebSocket`. */
function miniProgram() {
    const scope = globalThis;
    return scope.WebSocket === undefined ? scope.wx : undefined;
}
/**
 * A mini-program's storage (`wx`, `uni` or `Taro`): the device id with
 * `setStorageSync`, everything written often with `setStorage`, which
 * does not block the app.
 */
export function miniProgramStorage(api) {
    return {
        getItem(key) {
            const value = api.getStorageSync(key);
            return typeof value === 'string' && value !== '' ? value : null;
        },
        setItem: (key, value) => api.setStorageSync(key, value),
        setItemLater: (key, value) => api.setStorage({ key, data: value }),
    };
}
/** `localStorage` where there is one, a mini-program's storage where there is `wx`, else none. */
export function defaultStorage() {
    try {
        const local = globalThis.localStorage;
        if (local)
            return local;
    }
    catch (_a) {
        // Access to localStorage throws where it is forbidden (sandboxed frames).
    }
    const wx = miniProgram();
    return wx ? miniProgramStorage(wx) : undefined;
}
/** The global `wx` in a mini-program, else none. */
export function defaultLifecycle() {
    return miniProgram();
}

// A socket.io-client (the library Open WebUI's web app ships) driven by the
// Python tests.  It connects the way the web app's setupSocket() does, then
// prints one JSON line per thing that happens, on stdout:
//
//   {"kind":"connected","sid":"…","transport":"websocket"}
//   {"kind":"ack","event":"user-join","data":{…}}
//   {"kind":"event","t":<ms since epoch>,"data":{chat_id, message_id, data:{type, data}}}
//   {"kind":"upgraded","transport":"websocket"}
//   {"kind":"disconnected","reason":"…"}  {"kind":"error","message":"…"}
//
// It exits after --replies replies ended (an `events` of type chat:active
// with active false), or after --timeout-ms.
//
// node sio_client.mjs --url http://127.0.0.1:PORT --token T
//      [--transports websocket|polling,websocket|polling] [--user-join]
//      [--auth-in-handshake 0|1] [--replies N] [--timeout-ms MS] [--origin O]
//      [--path /chat/ws/socket.io] [--with-credentials] [--insecure]
//
// --with-credentials keeps cookies across requests, as a browser does (a proxy's
// affinity cookie); --insecure accepts a self-signed certificate (wss:// tests).
import { io } from "socket.io-client";

function parseArgs(argv) {
  const args = {};
  for (let i = 2; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, "");
    const next = argv[i + 1];
    if (next === undefined || next.startsWith("--")) {
      args[key] = true;
    } else {
      args[key] = next;
      i++;
    }
  }
  return args;
}

const args = parseArgs(process.argv);
const transports = (args.transports || "websocket").split(",");
const replies = Number(args.replies || 1);
const timeoutMs = Number(args["timeout-ms"] || 20000);
const authInHandshake = args["auth-in-handshake"] !== "0";

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

// Exit once what was written has reached the pipe (process.exit alone may cut a
// long last line: writes to a pipe are asynchronous).
function exit() {
  process.stdout.write("", () => process.exit(0));
}

const options = {
  path: args.path || "/ws/socket.io",
  transports,
  withCredentials: Boolean(args["with-credentials"]),
  rejectUnauthorized: !args.insecure,
  reconnection: false,
  // The web app passes the token through a callback (re-read on reconnect).
  auth: (cb) => cb(authInHandshake ? { token: args.token } : {}),
};
if (args.origin) {
  options.extraHeaders = { Origin: args.origin };
}
const socket = io(args.url, options);

let ended = 0;
const timer = setTimeout(() => {
  out({ kind: "timeout" });
  socket.close();
  exit();
}, timeoutMs);

// The engine may upgrade before Socket.IO's own connect: listen from its open.
socket.io.on("open", () => {
  socket.io.engine.on("upgrade", (transport) => out({ kind: "upgraded", transport: transport.name }));
});

socket.on("connect", () => {
  out({ kind: "connected", sid: socket.id, transport: socket.io.engine.transport.name });
  socket.emit("heartbeat", {});
  if (args["user-join"]) {
    socket.emit("user-join", { auth: { token: args.token } }, (data) =>
      out({ kind: "ack", event: "user-join", data }),
    );
  }
});

socket.on("events", (data) => {
  out({ kind: "event", t: Date.now(), data });
  if (data.data && data.data.type === "chat:active" && data.data.data.active === false) {
    ended += 1;
    if (ended >= replies) {
      clearTimeout(timer);
      out({ kind: "done" });
      socket.close();
      exit();
    }
  }
});

socket.on("connect_error", (err) => {
  out({ kind: "error", message: String(err && err.message) });
  clearTimeout(timer);
  exit();
});

socket.on("disconnect", (reason) => out({ kind: "disconnected", reason }));

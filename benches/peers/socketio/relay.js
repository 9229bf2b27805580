// A minimal socket.io chat relay: clients `join` a room (acknowledged) and send `msg` to a room;
// the relay emits it to every member of the room on every process (Redis adapter).
"use strict";
const { createServer } = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

async function main() {
  const port = Number(process.env.PORT || 4001);
  const pub = createClient({ url: process.env.REDIS_URL || "redis://127.0.0.1:6390" });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const http = createServer();
  const io = new Server(http, { transports: ["websocket"], adapter: createAdapter(pub, sub) });
  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      socket.join(String(room));
      if (typeof ack === "function") ack();
    });
    socket.on("msg", (room, payload) => {
      io.to(String(room)).emit("msg", payload);
    });
  });
  http.listen(port, "127.0.0.1", () => console.log(`relay ${process.pid} listening on ${port}`));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});

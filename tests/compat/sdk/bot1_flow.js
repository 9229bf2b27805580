// A bot on the published Rocket.Chat SDK 1.x (`Bot` client, the mobile app's client line),
// unmodified, through its own calls: REST login then DDP resume, join a room (by id: the SDK's
// join by name calls `chat.getRoomIdByNameOrId`, a route Rocket.Chat does not have), respond
// to messages ("ping": "pong" and a reaction; "history": `chat.syncMessages`; "leave": list
// users, leave the room). One JSON line per step on stdout (the SDK prints its own lines too;
// the test reads only JSON ones). Usage: node bot1_flow.js URL USERNAME PASSWORD ROOM_ID
'use strict';

const { say, quiet, fail, endWithStdin } = require('./lines');

const [url, username, password, rid] = process.argv.slice(2);
const { Bot } = require('rocketchat-sdk-1');
// The Bot client's own leaveRoom looks the room up through the missing route first; the API
// layer's leaveRoom (`POST rooms.leave {rid}`) is the SDK's call that reaches the server.
const Api = require('rocketchat-sdk-1/lib/api/RocketChat').default;


async function main() {
  const bot = new Bot({ host: url, useSsl: false, logger: quiet });
  await bot.connect({});
  await bot.login({ username, password });
  const missing = await bot.getRoomIdByNameOrId('anything').then(
    () => 'answered',
    (e) => String(e && e.message ? e.message : e)
  );
  await bot.post('channels.join', { roomId: rid }, true);
  const info = await bot.rooms.info({ rid });
  const seen = new Set();
  await bot.respondToMessages(
    async (err, message) => {
      if (err) {
        say('error', { error: String(err) });
        return;
      }
      // Changes to a message (a reaction) come again with the same time, which this SDK's
      // filter lets through: each message is handled once.
      if (seen.has(message._id)) return;
      seen.add(message._id);
      try {
        if (message.msg === 'ping') {
          await bot.sendToRoomId('pong', message.rid);
          await bot.setReaction(':thumbsup:', message._id);
          say('answered', { rid: message.rid });
        } else if (message.msg === 'history') {
          const since = new Date(Date.now() - 3600 * 1000);
          const { updated } = await bot.loadHistory(message.rid, since);
          say('history', { texts: updated.map((m) => m.msg) });
        } else if (message.msg === 'leave') {
          const names = await bot.users.allNames();
          say('users', { names });
          await Api.prototype.leaveRoom.call(bot, message.rid);
          say('left');
        }
      } catch (e) {
        say('failed', { error: String(e && e.message ? e.message : e) });
      }
    },
    { allPublic: false, dm: true, livechat: false, edited: false }
  );
  say('ready', { roomType: info.room && info.room.t, missingRoute: missing });
}

main().catch(fail);

endWithStdin();

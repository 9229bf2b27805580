// A bot on the published Rocket.Chat SDK 0.2 (hubot-rocketchat's driver), unmodified, through
// its own calls: connect, log in, join a room by name, respond to messages (answer "ping" with
// "pong" and a reaction, "dm me" with a direct message), list users over REST, log out of REST
// (`GET logout`) and leave the room. One JSON line per step on stdout.
// Usage: ROCKETCHAT_URL=host:port node bot02_flow.js HOST USERNAME PASSWORD ROOM
'use strict';

const { say, quiet, fail, endWithStdin } = require('./lines');

const [host, username, password, room] = process.argv.slice(2);
const { driver, api } = require('@rocket.chat/sdk');

driver.useLog(quiet);

async function handle(message, meta) {
  if (message.msg === 'ping') {
    await driver.sendToRoomId('pong', message.rid);
    await driver.setReaction(':thumbsup:', message._id);
    say('answered', { rid: message.rid, roomName: meta.roomName, roomType: meta.roomType });
  } else if (message.msg === 'dm me') {
    await driver.sendDirectToUser('hello in private', message.u.username);
    say('dm-sent');
  } else if (message.msg === 'leave') {
    await api.login({ username, password });
    const names = await api.users.allNames();
    const online = await api.users.onlineNames();
    say('users', { names, online });
    await api.logout();
    say('logged-out');
    // By id: the driver records joined rooms by id and looks the argument up in that list.
    await driver.leaveRoom(message.rid);
    say('left');
  }
}

async function main() {
  await driver.connect({ host, useSsl: false, timeout: 20000 });
  await driver.login({ username, password });
  await driver.joinRooms([room]);
  const joined = driver.joinedIds.slice();
  await driver.subscribeToMessages();
  await driver.respondToMessages(
    (err, message, meta) => {
      if (err) {
        say('error', { error: String(err) });
        return;
      }
      handle(message, meta).catch((e) => say('failed', { error: String(e && e.message ? e.message : e) }));
    },
    { rooms: [room], allPublic: false, dm: true, livechat: false, edited: false }
  );
  say('ready', { joined });
}

main().catch(fail);

endWithStdin();

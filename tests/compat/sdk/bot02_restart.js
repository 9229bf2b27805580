// A bot on the published Rocket.Chat SDK 0.2 (the driver hubot-rocketchat uses), unmodified:
// connect, log in, subscribe to its messages and print every message it is handed, one JSON
// line each, plus its connection events. The test drives a chatd around it (restarts it) and
// reads these lines. Usage: node bot02_restart.js HOST USERNAME PASSWORD
'use strict';

const { say, quiet, fail, endWithStdin } = require('./lines');

const [host, username, password] = process.argv.slice(2);
const { driver } = require('@rocket.chat/sdk');

driver.useLog(quiet);

async function main() {
  await driver.connect({ host, useSsl: false, timeout: 20000 });
  driver.events.on('reconnected', () => say('reconnected'));
  await driver.login({ username, password });
  await driver.subscribeToMessages();
  // As hubot-rocketchat does: its own messages, edits and old messages are filtered out.
  await driver.respondToMessages(
    (err, message, meta) => {
      if (err) {
        say('error', { error: String(err) });
        return;
      }
      say('message', { msg: message.msg, rid: message.rid, roomType: meta.roomType, roomName: meta.roomName });
    },
    { rooms: [], allPublic: false, dm: true, livechat: false, edited: false }
  );
  say('ready');
}

main().catch(fail);

endWithStdin();

// What the bot scripts share: one JSON line per event on stdout (the tests read these), a
// logger for the SDKs that keeps stdout for those lines, and an exit when the test closes the
// script's standard input (so a script never outlives its test).
'use strict';

function say(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event }, fields || {})) + '\n');
}

const toStderr = (...a) => process.stderr.write(a.join(' ') + '\n');
const quiet = { debug: () => {}, info: () => {}, warning: toStderr, warn: toStderr, error: toStderr };

function fail(e) {
  say('failed', { error: String(e && e.message ? e.message : e) });
  process.exit(1);
}

function endWithStdin() {
  process.stdin.resume();
  process.stdin.on('end', () => process.exit(0));
}

module.exports = { say, quiet, fail, endWithStdin };

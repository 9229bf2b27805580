// The web client's entry module: starts the client (session, DDP connection) and renders the
// page into <body>. Everything else is in client.js (state and API calls) and views.js.

import { h, render } from './vendor/preact.mjs';
import { Client } from './client.js';
import { App } from './views.js';

const client = new Client();
// For tests and for people curious in the console: the page's one client.
window.chatd = client;
render(h(App, { client }), document.getElementById('app'));
client.start();

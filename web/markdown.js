// Message text to safe HTML: marked parses the markdown chat people write (bold, italic,
// strikethrough, inline code, code blocks, links, quotes, lists); raw HTML in a message is shown
// as text, headings and images as plain text; DOMPurify then keeps only the tags listed here,
// only http(s)/mailto links, and every link opens in a new tab with rel="noopener noreferrer".

import { Marked } from './vendor/marked.mjs';
import DOMPurify from './vendor/purify.mjs';

const escapeHtml = (s) =>
  s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

const marked = new Marked({
  gfm: true,
  breaks: true,
  async: false,
  renderer: {
    // Raw HTML is text here, never markup.
    html(token) {
      return escapeHtml(token.text);
    },
    heading(token) {
      return `<p>${escapeHtml(token.raw.trim())}</p>`;
    },
    image(token) {
      return escapeHtml(token.raw);
    },
  },
});

const purify = DOMPurify;
purify.setConfig({
  ALLOWED_TAGS: ['p', 'br', 'strong', 'em', 'del', 'code', 'pre', 'a', 'blockquote', 'ul', 'ol', 'li'],
  ALLOWED_ATTR: ['href'],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:)/i,
  ALLOW_DATA_ATTR: false,
});
purify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') {
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer');
  }
});

/** The message's text as sanitized HTML. */
export function renderMarkdown(text) {
  const html = marked.parse(String(text ?? ''));
  return purify.sanitize(html);
}

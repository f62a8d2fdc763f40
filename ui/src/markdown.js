// Model output as HTML: markdown (marked), sanitized (DOMPurify: model output never injects
// markup or script), code blocks highlighted (highlight.js, which escapes what it reads) and
// given a copy button.
import DOMPurify from "dompurify";
import hljs from "highlight.js/lib/core";
import bash from "highlight.js/lib/languages/bash";
import c from "highlight.js/lib/languages/c";
import cpp from "highlight.js/lib/languages/cpp";
import css from "highlight.js/lib/languages/css";
import go from "highlight.js/lib/languages/go";
import java from "highlight.js/lib/languages/java";
import javascript from "highlight.js/lib/languages/javascript";
import json from "highlight.js/lib/languages/json";
import markdown from "highlight.js/lib/languages/markdown";
import python from "highlight.js/lib/languages/python";
import rust from "highlight.js/lib/languages/rust";
import sql from "highlight.js/lib/languages/sql";
import typescript from "highlight.js/lib/languages/typescript";
import xml from "highlight.js/lib/languages/xml";
import yaml from "highlight.js/lib/languages/yaml";
import { Marked } from "marked";

const languages = {
  bash, c, cpp, css, go, java, javascript, json, markdown, python, rust, sql, typescript, xml, yaml,
};
for (const [name, language] of Object.entries(languages)) hljs.registerLanguage(name, language);

const marked = new Marked({ gfm: true, breaks: false });

const purify = DOMPurify; // this page's only user: its settings and hooks are ours
purify.setConfig({
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "img"],
  FORBID_ATTR: ["style", "id"],
  RETURN_DOM_FRAGMENT: true,
});
// the one class kept: the language of a fenced code block, a name looked up among those above
purify.addHook("uponSanitizeAttribute", (node, data) => {
  if (data.attrName === "class") {
    data.keepAttr = node.tagName === "CODE" && /^language-[\w+#.-]{1,32}$/.test(data.attrValue);
  }
});
purify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

/** Fill `element` with `text` rendered as sanitized markdown. */
export function renderMarkdown(element, text) {
  const html = marked.parse(text, { async: false });
  element.replaceChildren(purify.sanitize(html));
  element.querySelectorAll("pre > code").forEach(decorate);
}

function decorate(code) {
  const language = code.className.startsWith("language-") ? code.className.slice(9) : null;
  const known = language && hljs.getLanguage(language) ? language : null;
  const source = code.textContent;
  if (known) {
    code.innerHTML = hljs.highlight(source, { language: known, ignoreIllegals: true }).value;
    code.classList.add("hljs", `language-${known}`);
  }
  const pre = code.parentElement;
  const bar = document.createElement("div");
  bar.className = "code-bar";
  const label = document.createElement("span");
  label.textContent = language || "text";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy";
  copy.textContent = "Copy";
  copy.setAttribute("aria-label", "Copy the code");
  copy.addEventListener("click", async () => {
    copy.textContent = (await copyText(source)) ? "Copied" : "Copy failed";
    setTimeout(() => (copy.textContent = "Copy"), 1500);
  });
  bar.append(label, copy);
  pre.before(bar);
}

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // fall through to the old way
    }
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.append(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  return ok;
}

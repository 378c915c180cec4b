// Copies the pinned htmx builds from node_modules into static/vendor/ (served by the gateway;
// no CDN at run time). Run by `npm run build` (make dashboard-assets).
import { copyFileSync, mkdirSync } from "node:fs";

const files = [
  ["node_modules/htmx.org/dist/htmx.min.js", "static/vendor/htmx.min.js"],
];
mkdirSync("static/vendor", { recursive: true });
for (const [from, to] of files) {
  copyFileSync(from, to);
  console.log(`${from} -> ${to}`);
}

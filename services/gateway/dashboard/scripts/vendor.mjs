// Copies the pinned htmx, Swagger UI and Redoc builds from node_modules into static/vendor/
// (served by the gateway; no CDN at run time, so /docs and /redoc work offline). Run by
// `npm run build` (make dashboard-assets).
import { copyFileSync, mkdirSync } from "node:fs";

const files = [
  ["node_modules/htmx.org/dist/htmx.min.js", "static/vendor/htmx.min.js"],
  ["node_modules/swagger-ui-dist/swagger-ui-bundle.js", "static/vendor/swagger-ui-bundle.js"],
  ["node_modules/swagger-ui-dist/swagger-ui.css", "static/vendor/swagger-ui.css"],
  ["node_modules/swagger-ui-dist/favicon-32x32.png", "static/vendor/swagger-favicon-32x32.png"],
  ["node_modules/redoc/bundles/redoc.standalone.js", "static/vendor/redoc.standalone.js"],
];
mkdirSync("static/vendor", { recursive: true });
for (const [from, to] of files) {
  copyFileSync(from, to);
  console.log(`${from} -> ${to}`);
}

import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

// The package is resolved from the freshly built pkg/ (as `npm install` of
// the published package would), and top-level await needs an es2022 target.
export default defineConfig({
  root: fileURLToPath(new URL(".", import.meta.url)),
  logLevel: "warn",
  resolve: { alias: { "@cuitty/persist": fileURLToPath(new URL("../../../pkg/index.js", import.meta.url)) } },
  build: { target: "es2022", outDir: fileURLToPath(new URL("../vite-dist", import.meta.url)), emptyOutDir: true },
});

// A bundled app: imports the package by name, as an app would after
// `npm install @cuitty/persist`.
import { createStore } from "@cuitty/persist";

const out = document.querySelector("#out");
try {
  const store = await createStore("vite-app", { adapter: "indexeddb" });
  await store.records("notes").put("n1", { title: "bundled" });
  const note = await store.records("notes").get("n1");
  await store.close();
  out.textContent = `ok ${note.title}`;
} catch (error) {
  out.textContent = `error ${error.code ?? ""} ${error.message}`;
}
window.done = true;

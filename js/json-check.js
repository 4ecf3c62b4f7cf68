// What both builds of @cuitty/persist accept as a JSON value: the replacer
// they pass to JSON.stringify. It refuses, wherever it sits in the value,
// what JSON would silently drop or change (undefined, a function, a
// symbol, NaN and the infinities, a Map, a Set) and what it cannot write
// (a BigInt); JSON.stringify itself refuses cycles. `toJSON` has run before
// the replacer sees a value, so a Date arrives as its ISO text.
function refused(what, key) {
  const error = new Error(`not a JSON value: ${what}${key === "" ? "" : ` at key ${JSON.stringify(key)}`}`);
  error.code = "INVALID_VALUE";
  return error;
}

export function jsonCheck(key, value) {
  switch (typeof value) {
    case "undefined":
      throw refused("undefined (use null, or leave the key out)", key);
    case "function":
      throw refused("a function", key);
    case "symbol":
      throw refused("a symbol", key);
    case "bigint":
      throw refused("a BigInt (store it as a string)", key);
    case "number":
      if (!Number.isFinite(value)) throw refused("a number that is not finite", key);
      return value;
    case "object":
      if (value instanceof Map) throw refused("a Map (use a plain object)", key);
      if (value instanceof Set) throw refused("a Set (use an array)", key);
      return value;
    default:
      return value;
  }
}

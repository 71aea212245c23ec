// Runs SQL statements on chDB, ClickHouse as a library (npm's chdb), for
// the current-engine test of sink/ (chdb_test.go). Usage:
//
//   NODE_PATH=<node_modules with chdb> node chdb.js <session dir> < statements.json
//
// stdin: a JSON array of {"sql", "format"}; stdout: a JSON array with one
// result per statement, {"ok": true, "out": "<output>"} or
// {"ok": false, "error": "<message>"}. Every statement runs, in order, in
// one session (one on-disk database directory).
const { Session } = require('chdb');
const fs = require('fs');

const stmts = JSON.parse(fs.readFileSync(0, 'utf8'));
const session = new Session(process.argv[2]);
const results = stmts.map(({ sql, format }) => {
  try {
    return { ok: true, out: String(session.query(sql, format || 'TabSeparated')) };
  } catch (e) {
    return { ok: false, error: String((e && e.message) || e) };
  }
});
process.stdout.write(JSON.stringify(results));

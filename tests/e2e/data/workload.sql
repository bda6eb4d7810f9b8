-- A deterministic SQLite workload for tests/e2e (programs_test.cc, kernel_oracle_test.cc), run as
--   sqlite3 :memory: '.read tests/e2e/data/workload.sql'
-- Every query orders its rows, so the output is the same on every run.
CREATE TABLE item(id INTEGER PRIMARY KEY, grp INTEGER NOT NULL, name TEXT NOT NULL, price REAL);
WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 3000)
INSERT INTO item(id, grp, name, price) SELECT x, x % 17, 'item-' || x, (x * 37 % 1000) / 10.0 FROM n;
CREATE INDEX item_grp ON item(grp);
CREATE INDEX item_name ON item(name);
SELECT count(*), sum(price), min(name), max(name) FROM item;
SELECT grp, count(*), round(avg(price), 2) FROM item GROUP BY grp ORDER BY grp;
SELECT id, name, price FROM item WHERE grp = 5 ORDER BY price DESC, id LIMIT 10;
SELECT name FROM item WHERE name LIKE 'item-29%' ORDER BY name LIMIT 12;
UPDATE item SET price = price * 2 WHERE grp IN (1, 2, 3);
DELETE FROM item WHERE id % 10 = 0;
SELECT count(*), round(sum(price), 1) FROM item;
CREATE TABLE tally(grp INTEGER PRIMARY KEY, total REAL);
INSERT INTO tally SELECT grp, sum(price) FROM item GROUP BY grp;
SELECT t.grp, round(t.total, 1), count(i.id) FROM tally t JOIN item i ON i.grp = t.grp
  GROUP BY t.grp ORDER BY t.total DESC LIMIT 5;
WITH RECURSIVE fib(a, b, k) AS (SELECT 0, 1, 0 UNION ALL SELECT b, a + b, k + 1 FROM fib WHERE k < 40)
SELECT k, a FROM fib ORDER BY k DESC LIMIT 3;

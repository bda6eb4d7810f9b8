-- A small workload for scripts/demo: a table of 2,000 orders, an index, a few queries.
CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, amount INTEGER);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
INSERT INTO orders(customer, amount) SELECT 'customer-' || (i % 50), (i * 37) % 1000 FROM n;
CREATE INDEX orders_by_customer ON orders(customer);
SELECT count(*), sum(amount) FROM orders;
SELECT customer, count(*), max(amount) FROM orders GROUP BY customer ORDER BY 3 DESC LIMIT 3;
UPDATE orders SET amount = amount + 1 WHERE customer = 'customer-7';
DELETE FROM orders WHERE amount < 100;
SELECT count(*) FROM orders;

-- The same table name in two schemas: a leaked search_path sends an unqualified DELETE to the wrong one.
CREATE SCHEMA archive;
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE archive.customers (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id int PRIMARY KEY, customer_id int);
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 10) g;
INSERT INTO archive.customers SELECT g, 'archived ' || g FROM generate_series(1, 10) g;
INSERT INTO orders SELECT g, 1 + g % 5 FROM generate_series(1, 20) g;

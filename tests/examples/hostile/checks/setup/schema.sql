CREATE TABLE customers (id int PRIMARY KEY, name text);
INSERT INTO customers VALUES (1, 'a'), (2, 'b');
-- A legitimate but awkward name: quotes, spaces and non-ASCII must be quoted, not broken.
CREATE TABLE "odd ""name"" ü" (id int PRIMARY KEY, "customer id" int);
INSERT INTO "odd ""name"" ü" VALUES (1, 1), (2, 2);

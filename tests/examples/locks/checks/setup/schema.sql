CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO big SELECT g, g % 1000 FROM generate_series(1, 100000) g;
ANALYZE big;

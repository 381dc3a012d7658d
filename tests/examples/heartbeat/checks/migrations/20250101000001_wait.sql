SELECT pg_advisory_xact_lock(4242);
CREATE TABLE after_wait (id int PRIMARY KEY);

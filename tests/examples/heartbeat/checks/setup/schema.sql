SELECT pg_advisory_xact_lock(4241);
CREATE TABLE before_wait (id int PRIMARY KEY);

-- int to bigint rewrites the table and its indexes under ACCESS EXCLUSIVE
ALTER TABLE big ALTER COLUMN v TYPE bigint;

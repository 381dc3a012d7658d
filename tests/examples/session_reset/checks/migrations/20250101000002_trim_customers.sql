INSERT INTO public.observed
SELECT '2', current_setting('search_path'), current_setting('lock_timeout'), current_setting('statement_timeout');
DELETE FROM customers WHERE id > 5;

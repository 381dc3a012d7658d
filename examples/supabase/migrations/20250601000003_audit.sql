-- An audit trail outside the public schema: a table, a trigger function and a trigger on a public table.
CREATE SCHEMA audit;
CREATE TYPE public.ticket_kind AS ENUM ('bug', 'feature', 'question');
CREATE TABLE audit.log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  uuid NOT NULL,
    table_name text NOT NULL,
    row_id     uuid NOT NULL,
    action     varchar(10) NOT NULL CHECK (action IN ('delete', 'archive')),
    at         timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE audit.log ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit.log TO authenticated USING (tenant_id = auth.tenant_id());
-- SECURITY DEFINER (it writes audit.log for any caller) with a fixed search_path: a caller's search_path must not
-- decide what its names mean.
CREATE FUNCTION audit.log_ticket_delete() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
  INSERT INTO audit.log (tenant_id, table_name, row_id, action) VALUES (OLD.tenant_id, 'tickets', OLD.id, 'delete');
  RETURN OLD;
END
$$;
CREATE TRIGGER tickets_audit_delete AFTER DELETE ON public.tickets
  FOR EACH ROW EXECUTE FUNCTION audit.log_ticket_delete();
ALTER TABLE public.tickets ADD COLUMN kind public.ticket_kind NOT NULL DEFAULT 'bug';

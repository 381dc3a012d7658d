"""The benchmark's second workload: a Supabase-shaped application of 46 tables, written out as a pytest-phase4
project (setup files, migrations, plan) that `run.py` builds at `--rows N`.

It follows `examples/supabase/`: uuid primary keys (md5-derived, so every build holds the same rows), a
`tenant_id` on every tenant-owned table, row-level security on every table with `auth.uid()` / `auth.tenant_id()`
policies reading `request.jwt.claims`, `updated_at` triggers, soft deletes (`deleted_at`), views with several
joins and soft-delete filters (some `security_invoker`, some with their owner's rights), the API roles, and
denormalized columns a destructive migration drops. Column types include jsonb, json, text[], inet, point,
interval, numeric, enums and bytea, so the content checksum meets types with and without a hash opclass.

Sizes: L tables hold N rows, M tables N/10, S tables N/100, the others a fixed handful. Foreign keys are added
after the data (as a restore does) and about half of them are indexed, as in real projects (Supabase's linter
warns about the others).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SIZES = {"L": "{n}", "M": "greatest({n} / 10, 20)", "S": "greatest({n} / 100, 10)"}
TENANTS = 20


@dataclass(frozen=True)
class FK:
    column: str
    parent: str
    nullable: bool = False
    indexed: bool = False


@dataclass(frozen=True)
class Table:
    name: str
    size: str | int
    fks: tuple[FK, ...] = ()
    columns: tuple[tuple[str, str, str], ...] = ()  # name, type, value (SQL over g, the row number)
    soft_delete: bool = False
    tenant: bool = True  # a tenant_id column and the tenant_isolation policy
    owner: str | None = None  # the column of the profile allowed to update the row (policy own_rows)
    dropped: tuple[tuple[str, str, str], ...] = ()  # denormalized copies, dropped by the last migration
    added: tuple[FK, ...] = field(default=())  # foreign-key columns a migration adds


def _t(text: str, width: int = 1) -> str:
    """A text value of about 32 * width characters for row g."""
    return f"'{text} ' || g || ' ' || repeat(md5(g::text || '{text}'), {width})"


def col(name: str, type_: str, value: str) -> tuple[str, str, str]:
    return (name, type_, value)


T, NN = "text", "text NOT NULL"
TS = "timestamptz"
AT = "'2025-01-01'::timestamptz + g * interval '1 minute'"
TABLES: tuple[Table, ...] = (
    Table("plans", 4, columns=(col("name", NN, "'plan ' || g"), col("price", "numeric(10,2) NOT NULL", "g * 9.99"),
                               col("limits", "jsonb NOT NULL", "jsonb_build_object('seats', g * 10)")), tenant=False),
    Table("countries", 60, columns=(col("code", NN, "'C' || g"), col("name", NN, "'Country ' || g")), tenant=False),
    Table("currencies", 12, columns=(col("code", NN, "'X' || g"), col("rate", "numeric(12,6) NOT NULL", "1 + g / 7.0")),
          tenant=False),
    Table("tenants", TENANTS, (FK("plan_id", "plans"),),
          (col("name", NN, "'Tenant ' || g"), col("slug", NN, "'tenant-' || g"),
           col("settings", "jsonb NOT NULL", "'{\"theme\": \"dark\"}'"))),
    Table("profiles", "S", (),
          (col("email", NN, "'user' || g || '@example.com'"), col("full_name", NN, "'User ' || g"),
           col("role", "app_role NOT NULL", "(ARRAY['admin','member','viewer'])[1 + g % 3]::app_role"),
           col("locale", "varchar(8) NOT NULL", "'en'"), col("last_seen_at", TS, AT)),
          soft_delete=True, owner="id", dropped=(col("tenant_name", T, "'Tenant ' || (1 + g % 20)"),)),
    Table("teams", "S", (FK("lead_id", "profiles", True, True),), (col("name", NN, "'Team ' || g"),)),
    Table("team_members", "M", (FK("team_id", "teams", indexed=True), FK("profile_id", "profiles")),
          (col("joined_at", "date NOT NULL", "date '2024-01-01' + g % 400"),)),
    Table("api_keys", "S", (FK("created_by", "profiles"),),
          (col("prefix", NN, "substr(md5(g::text), 1, 8)"),
           col("secret_hash", "bytea NOT NULL", "decode(md5(g::text), 'hex')"),
           col("scopes", "text[] NOT NULL", "ARRAY['read', 'write']"), col("expires_at", TS, "NULL")),
          owner="created_by"),
    Table("sessions", "M", (FK("profile_id", "profiles", indexed=True),),
          (col("ip", "inet NOT NULL", "('10.0.' || g % 250 || '.' || g % 200)::inet"),
           col("user_agent", NN, _t("agent")),
           col("expires_at", f"{TS} NOT NULL", AT)), owner="profile_id"),
    Table("organizations", "S", (FK("country_id", "countries"), FK("owner_id", "profiles", True)),
          (col("name", NN, "'Org ' || g"), col("domain", T, "'org' || g || '.example.com'")), soft_delete=True),
    Table("contacts", "M", (FK("organization_id", "organizations", True, True), FK("owner_id", "profiles")),
          (col("email", NN, "'contact' || g || '@example.org'"), col("phone", T, "'+1555' || g"),
           col("address", "json", "json_build_object('city', 'City ' || g % 90, 'zip', g % 99999)"),
           col("location", "point", "point(g % 180, g % 90)")), soft_delete=True, owner="owner_id",
          dropped=(col("organization_name", T, "'Org ' || g % 100"),)),
    Table("deal_stages", "S", (), (col("name", NN, "'stage ' || g % 6"), col("position", "int NOT NULL", "g % 6"))),
    Table("deals", "M", (FK("organization_id", "organizations", indexed=True), FK("contact_id", "contacts", True),
                         FK("owner_id", "profiles"), FK("stage_id", "deal_stages"), FK("currency_id", "currencies")),
          (col("title", NN, _t("deal")), col("amount", "numeric(12,2) NOT NULL", "(g % 100000) / 3.0"),
           col("expected_close", "date", "date '2025-01-01' + g % 365")), soft_delete=True, owner="owner_id"),
    Table("activities", "L", (FK("deal_id", "deals", True), FK("contact_id", "contacts", True),
                              FK("actor_id", "profiles")),
          (col("kind", "activity_kind NOT NULL", "(ARRAY['call','email','meeting','note'])[1 + g % 4]::activity_kind"),
           col("payload", "jsonb NOT NULL", "jsonb_build_object('n', g % 97, 'via', 'web')"),
           col("occurred_at", f"{TS} NOT NULL", AT))),
    Table("projects", "S", (FK("owner_id", "profiles"), FK("organization_id", "organizations", True)),
          (col("name", NN, "'Project ' || g"), col("status", "varchar(20) NOT NULL", "'active'")), soft_delete=True,
          owner="owner_id",
          dropped=(col("owner_name", T, "'User ' || g"), col("owner_email", T, "'user' || g || '@example.com'"))),
    Table("project_members", "M", (FK("project_id", "projects", indexed=True), FK("profile_id", "profiles")),
          (col("role", "varchar(20) NOT NULL", "'member'"),)),
    Table("sprints", "S", (FK("project_id", "projects"),),
          (col("name", NN, "'Sprint ' || g"), col("starts_on", "date NOT NULL", "date '2025-01-06' + (g % 50) * 14"),
           col("length", "interval NOT NULL", "interval '14 days'"))),
    Table("tickets", "L", (FK("project_id", "projects", indexed=True), FK("reporter_id", "profiles"),
                           FK("sprint_id", "sprints", True)),
          (col("title", NN, _t("ticket")),
           col("status", "varchar(20) NOT NULL", "(ARRAY['open','in_progress','closed'])[1 + g % 3]"),
           col("priority", "varchar(10) NOT NULL", "(ARRAY['low','medium','high'])[1 + g % 3]"),
           col("tags", "text[]", "CASE WHEN g % 4 = 0 THEN ARRAY['bug', 'ui'] END"),
           col("sla", "interval", "interval '48 hours'")),
          soft_delete=True, owner="reporter_id",
          dropped=(col("reporter_email", T, "'user' || g % 977 || '@example.com'"),
                   col("project_name", T, "'Project ' || g % 97")),
          added=(FK("assignee_id", "profiles", True, True),)),
    Table("comments", "L", (FK("ticket_id", "tickets", indexed=True), FK("author_id", "profiles")),
          (col("body", NN, _t("comment", 2)),), soft_delete=True, owner="author_id",
          dropped=(col("author_name", T, "'User ' || g % 977"),), added=(FK("reply_to_id", "comments", True),)),
    Table("labels", "S", (), (col("name", NN, "'label ' || g"), col("color", NN, "'#' || substr(md5(g::text), 1, 6)"))),
    Table("ticket_labels", "M", (FK("ticket_id", "tickets", indexed=True), FK("label_id", "labels")), ()),
    Table("attachments", "M", (FK("ticket_id", "tickets"), FK("comment_id", "comments", True),
                               FK("uploaded_by", "profiles")),
          (col("storage_path", NN, "'bucket/' || md5(g::text)"), col("size_bytes", "bigint NOT NULL", "g * 1024"),
           col("mime", NN, "'image/png'")), owner="uploaded_by"),
    Table("time_entries", "M", (FK("ticket_id", "tickets", indexed=True), FK("profile_id", "profiles")),
          (col("minutes", "int NOT NULL", "15 + g % 240"), col("billable", "boolean NOT NULL", "g % 3 = 0"),
           col("spent_on", "date NOT NULL", "date '2025-01-01' + g % 365")), owner="profile_id"),
    Table("products", "S", (),
          (col("sku", NN, "'SKU-' || g"), col("name", NN, "'Product ' || g"),
           col("price", "numeric(12,2) NOT NULL", "1 + g % 500"),
           col("attributes", "jsonb NOT NULL", "jsonb_build_object('color', g % 12, 'size', g % 5)")),
          soft_delete=True),
    Table("price_lists", 8, (FK("currency_id", "currencies"),), (col("name", NN, "'list ' || g"),)),
    Table("prices", "M", (FK("product_id", "products", indexed=True), FK("price_list_id", "price_lists")),
          (col("amount", "numeric(12,2) NOT NULL", "1 + g % 700"),)),
    Table("warehouses", 6, (FK("country_id", "countries"),),
          (col("name", NN, "'Warehouse ' || g"), col("location", "point NOT NULL", "point(g, g)"))),
    Table("stock_levels", "S", (FK("product_id", "products"), FK("warehouse_id", "warehouses")),
          (col("quantity", "int NOT NULL", "g % 1000"),)),
    Table("orders", "M", (FK("organization_id", "organizations", indexed=True), FK("contact_id", "contacts", True),
                          FK("placed_by", "profiles"), FK("currency_id", "currencies")),
          (col("status", "order_status NOT NULL",
               "(ARRAY['pending','paid','shipped','cancelled'])[1 + g % 4]::order_status"),
           col("total", "numeric(14,2) NOT NULL", "(g % 50000) / 7.0"), col("placed_at", f"{TS} NOT NULL", AT)),
          soft_delete=True, owner="placed_by", dropped=(col("organization_name", T, "'Org ' || g % 100"),)),
    Table("order_items", "L", (FK("order_id", "orders", indexed=True), FK("product_id", "products")),
          (col("quantity", "int NOT NULL", "1 + g % 9"), col("unit_price", "numeric(12,2) NOT NULL", "1 + g % 500"),
           col("discount", "numeric(5,2)", "CASE WHEN g % 5 = 0 THEN 10 END")),
          dropped=(col("product_name", T, "'Product ' || g % 300"),)),
    Table("invoices", "M", (FK("order_id", "orders", indexed=True), FK("organization_id", "organizations")),
          (col("number", NN, "'INV-' || g"), col("issued_on", "date NOT NULL", "date '2025-01-01' + g % 365"),
           col("total", "numeric(14,2) NOT NULL", "(g % 50000) / 7.0"))),
    Table("payments", "M", (FK("invoice_id", "invoices"),),
          (col("amount", "numeric(14,2) NOT NULL", "(g % 50000) / 7.0"), col("method", NN, "'card'"),
           col("paid_at", f"{TS} NOT NULL", AT))),
    Table("shipments", "M", (FK("order_id", "orders"), FK("warehouse_id", "warehouses")),
          (col("carrier", NN, "'carrier ' || g % 5"), col("tracking", T, "md5(g::text)"),
           col("address", "json NOT NULL", "json_build_object('street', g || ' Main St')"))),
    Table("channels", "S", (FK("created_by", "profiles"),),
          (col("name", NN, "'channel-' || g"), col("private", "boolean NOT NULL", "g % 5 = 0"))),
    Table("channel_members", "M", (FK("channel_id", "channels", indexed=True), FK("profile_id", "profiles")), ()),
    Table("messages", "L", (FK("channel_id", "channels", indexed=True), FK("author_id", "profiles"),
                            FK("thread_id", "messages", True)),
          (col("body", NN, _t("message", 2)), col("edited_at", TS, "NULL")), soft_delete=True, owner="author_id"),
    Table("reactions", "M", (FK("message_id", "messages"), FK("profile_id", "profiles")),
          (col("emoji", NN, "(ARRAY['+1','tada','eyes'])[1 + g % 3]"),), owner="profile_id"),
    Table("notifications", "M", (FK("profile_id", "profiles", indexed=True),),
          (col("kind", NN, "'mention'"), col("payload", "jsonb NOT NULL", "jsonb_build_object('ref', g)"),
           col("read_at", TS, "CASE WHEN g % 3 = 0 THEN '2025-03-01'::timestamptz END")), owner="profile_id"),
    Table("webhooks", "S", (FK("created_by", "profiles"),),
          (col("url", NN, "'https://hooks.example.com/' || g"), col("events", "text[] NOT NULL", "ARRAY['created']"))),
    Table("webhook_deliveries", "M", (FK("webhook_id", "webhooks", indexed=True),),
          (col("status_code", "int NOT NULL", "CASE WHEN g % 20 = 0 THEN 500 ELSE 200 END"),
           col("request", "json NOT NULL", "json_build_object('id', g)"), col("delivered_at", f"{TS} NOT NULL", AT))),
    Table("audit_events", "L", (FK("actor_id", "profiles"),),
          (col("table_name", NN, "'tickets'"), col("row_id", "uuid NOT NULL", "md5('tickets:' || g)::uuid"),
           col("action", NN, "(ARRAY['insert','update','delete'])[1 + g % 3]"),
           col("diff", "jsonb", "jsonb_build_object('status', 'open')"))),
    Table("feature_flags", 40, (), (col("key", NN, "'flag_' || g"), col("enabled", "boolean NOT NULL", "g % 2 = 0"))),
    Table("folders", "S", (FK("parent_id", "folders", True), FK("owner_id", "profiles")),
          (col("name", NN, "'folder ' || g"),), owner="owner_id"),
    Table("documents", "S", (FK("folder_id", "folders", True), FK("owner_id", "profiles")),
          (col("title", NN, "'Doc ' || g"),), soft_delete=True, owner="owner_id"),
    Table("document_versions", "M", (FK("document_id", "documents", indexed=True), FK("author_id", "profiles")),
          (col("version", "int NOT NULL", "g % 20"), col("content", NN, _t("version", 3))), owner="author_id"),
)

# Views over the tables: (name, security_invoker, base table, soft-delete condition on the base, SQL)
VIEWS: tuple[tuple[str, bool, str, str | None, str], ...] = (
    ("active_tickets", True, "tickets", "deleted_at IS NULL",
     "SELECT id, tenant_id, project_id, title, status, priority FROM public.tickets WHERE deleted_at IS NULL"),
    ("ticket_details", False, "tickets", "deleted_at IS NULL",
     "SELECT t.id, t.title, t.status, p.name AS project, r.full_name AS reporter, a.full_name AS assignee"
     " FROM public.tickets t JOIN public.projects p ON p.id = t.project_id"
     " LEFT JOIN public.profiles r ON r.id = t.reporter_id LEFT JOIN public.profiles a ON a.id = t.assignee_id"
     " WHERE t.deleted_at IS NULL"),
    ("comment_feed", True, "comments", "deleted_at IS NULL",
     "SELECT c.id, c.body, t.title AS ticket, u.full_name AS author FROM public.comments c"
     " JOIN public.tickets t ON t.id = c.ticket_id LEFT JOIN public.profiles u ON u.id = c.author_id"
     " WHERE c.deleted_at IS NULL"),
    ("channel_messages", True, "messages", "deleted_at IS NULL",
     "SELECT m.id, m.body, c.name AS channel, p.full_name AS author FROM public.messages m"
     " JOIN public.channels c ON c.id = m.channel_id LEFT JOIN public.profiles p ON p.id = m.author_id"
     " WHERE m.deleted_at IS NULL"),
    ("open_deals", False, "deals", "deleted_at IS NULL",
     "SELECT d.id, d.title, d.amount, s.name AS stage, o.name AS organization, u.full_name AS owner"
     " FROM public.deals d JOIN public.deal_stages s ON s.id = d.stage_id"
     " LEFT JOIN public.organizations o ON o.id = d.organization_id LEFT JOIN public.profiles u ON u.id = d.owner_id"
     " WHERE d.deleted_at IS NULL"),
    ("active_contacts", True, "contacts", "deleted_at IS NULL",
     "SELECT id, tenant_id, email, phone FROM public.contacts WHERE deleted_at IS NULL"),
    ("order_overview", False, "orders", "deleted_at IS NULL",
     "SELECT o.id, o.status, o.total, g.name AS organization, c.code AS currency FROM public.orders o"
     " LEFT JOIN public.organizations g ON g.id = o.organization_id"
     " LEFT JOIN public.currencies c ON c.id = o.currency_id"
     " WHERE o.deleted_at IS NULL"),
    ("product_catalog", True, "products", "deleted_at IS NULL",
     "SELECT id, sku, name, price FROM public.products WHERE deleted_at IS NULL"),
    ("unread_notifications", True, "notifications", "read_at IS NULL",
     "SELECT id, profile_id, kind FROM public.notifications WHERE read_at IS NULL"),
    ("team_roster", False, "team_members", None,
     "SELECT m.id, t.name AS team, p.full_name AS member FROM public.team_members m"
     " JOIN public.teams t ON t.id = m.team_id JOIN public.profiles p ON p.id = m.profile_id"),
)


def size_sql(table: Table) -> str:
    n = "current_setting('bench.rows')::int"
    return str(table.size) if isinstance(table.size, int) else SIZES[table.size].format(n=n)


def by_name() -> dict[str, Table]:
    return {t.name: t for t in TABLES}


def uuid_of(table: str, index_sql: str) -> str:
    return f"md5('{table}:' || ({index_sql}))::uuid"


def schema_sql() -> str:
    out = [
        "-- Generated by benchmarks/supabase_app.py: a Supabase-shaped application (see its docstring).",
        "DO $$ BEGIN",
        "  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;",
        "  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN",
        "    CREATE ROLE authenticated NOLOGIN; END IF;",
        "  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN",
        "    CREATE ROLE service_role NOLOGIN BYPASSRLS; END IF;",
        "END $$;",
        "CREATE SCHEMA IF NOT EXISTS auth;",
        "CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$",
        "  SELECT nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'sub', '')::uuid $$;",
        "CREATE OR REPLACE FUNCTION auth.tenant_id() RETURNS uuid LANGUAGE sql STABLE AS $$",
        "  SELECT nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'tenant_id', '')::uuid $$;",
        "GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;",
        "CREATE OR REPLACE FUNCTION public.set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$",
        "BEGIN NEW.updated_at := now(); RETURN NEW; END $$;",
        "CREATE TYPE public.app_role AS ENUM ('admin', 'member', 'viewer');",
        "CREATE TYPE public.activity_kind AS ENUM ('call', 'email', 'meeting', 'note');",
        "CREATE TYPE public.order_status AS ENUM ('pending', 'paid', 'shipped', 'cancelled');",
    ]
    for t in TABLES:
        cols = ["id uuid PRIMARY KEY DEFAULT gen_random_uuid()"]
        if t.tenant:
            cols.append("tenant_id uuid NOT NULL")
        cols += [f"{fk.column} uuid{'' if fk.nullable else ' NOT NULL'}" for fk in t.fks]
        cols += [f"{name} {type_}" for name, type_, _ in (*t.columns, *t.dropped)]
        cols += ["created_at timestamptz NOT NULL DEFAULT now()", "updated_at timestamptz NOT NULL DEFAULT now()"]
        if t.soft_delete:
            cols.append("deleted_at timestamptz")
        out.append(f"CREATE TABLE public.{t.name} (\n    " + ",\n    ".join(cols) + "\n);")
    return "\n".join(out) + "\n"


def data_sql() -> str:
    """Rows by generate_series; then the constraints, indexes, RLS, policies, triggers and grants (after the data,
    as a restore does: one validation scan per foreign key instead of a trigger per row)."""
    tables = by_name()
    out = ["-- Generated by benchmarks/supabase_app.py. bench.rows: rows in each large table."]
    for t in TABLES:
        names, values = ["id"], [uuid_of(t.name, "g")]
        if t.tenant:
            names.append("tenant_id")
            values.append(uuid_of("tenants", f"1 + g % {TENANTS}") if t.name != "tenants" else uuid_of("tenants", "g"))
        for i, fk in enumerate(t.fks):
            parent = size_sql(tables[fk.parent])
            pick = uuid_of(fk.parent, f"1 + (g::bigint * {7919 + 2 * i} + {i}) % {parent}")
            if fk.parent == t.name:  # a self reference: an earlier row
                pick = uuid_of(fk.parent, "greatest(g - 1 - g % 3, 1)")
            names.append(fk.column)
            values.append(f"CASE WHEN g % 10 = {3 + i} THEN NULL ELSE {pick} END" if fk.nullable else pick)
        for name, _, value in (*t.columns, *t.dropped):
            names.append(name)
            values.append(value)
        if t.soft_delete:
            names.append("deleted_at")
            values.append("CASE WHEN g % 25 = 0 THEN '2025-02-01 00:00:00+00'::timestamptz END")
        out.append(f"INSERT INTO public.{t.name} ({', '.join(names)})\nSELECT " + ",\n       ".join(values)
                   + f"\nFROM generate_series(1, {size_sql(t)}) g;")
    for t in TABLES:
        if t.tenant:
            out.append(f"ALTER TABLE public.{t.name} ADD FOREIGN KEY (tenant_id) REFERENCES public.tenants (id);")
        for fk in t.fks:
            out.append(f"ALTER TABLE public.{t.name} ADD FOREIGN KEY ({fk.column}) REFERENCES public.{fk.parent} (id);")
            if fk.indexed:
                out.append(f"CREATE INDEX {t.name}_{fk.column}_idx ON public.{t.name} ({fk.column});")
        if t.tenant and t.size == "L":  # RLS filters by tenant: the large tables have the index it uses
            out.append(f"CREATE INDEX {t.name}_tenant_idx ON public.{t.name} (tenant_id);")
        out.append(f"CREATE TRIGGER {t.name}_updated_at BEFORE UPDATE ON public.{t.name} "
                   "FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();")
        out.append(f"ALTER TABLE public.{t.name} ENABLE ROW LEVEL SECURITY;")
        if t.tenant:
            out.append(f"CREATE POLICY tenant_isolation ON public.{t.name} TO authenticated "
                       "USING (tenant_id = auth.tenant_id()) WITH CHECK (tenant_id = auth.tenant_id());")
        else:
            out.append(f"CREATE POLICY read_all ON public.{t.name} FOR SELECT TO anon, authenticated USING (true);")
        if t.owner:
            out.append(f"CREATE POLICY own_rows ON public.{t.name} AS RESTRICTIVE FOR UPDATE TO authenticated "
                       f"USING ({t.owner} = auth.uid());")
        out.append(f"GRANT SELECT, INSERT, UPDATE, DELETE ON public.{t.name} TO authenticated, service_role;")
    out.append("ALTER TABLE public.audit_events FORCE ROW LEVEL SECURITY;")
    return "\n".join(out) + "\n"


def migrations() -> dict[str, str]:
    """File name -> SQL: foreign-key columns added, a backfill, the views, and the destructive drop."""
    added = [(t, fk) for t in TABLES for fk in t.added]
    first = [f"ALTER TABLE public.{t.name} ADD COLUMN {fk.column} uuid REFERENCES public.{fk.parent} (id);"
             for t, fk in added]
    first += [f"CREATE INDEX {t.name}_{fk.column}_idx ON public.{t.name} ({fk.column});"
              for t, fk in added if fk.indexed]
    backfill = [
        "-- Data migration: open tickets are assigned to their reporter; a comment replies to another.",
        "UPDATE public.tickets SET assignee_id = reporter_id WHERE status <> 'closed';",
        "UPDATE public.comments c SET reply_to_id = p.id FROM public.comments p",
        "  WHERE c.id = md5('comments:' || 1)::uuid AND p.id = md5('comments:' || 2)::uuid;",
    ]
    views = ["CREATE SCHEMA api;", "GRANT USAGE ON SCHEMA api TO anon, authenticated, service_role;"]
    for name, invoker, _, _, body in VIEWS:
        opts = " WITH (security_invoker = true)" if invoker else ""
        views.append(f"CREATE VIEW public.{name}{opts} AS\n  {body};")
        views.append(f"GRANT SELECT ON public.{name} TO authenticated, service_role;")
    views.append("CREATE VIEW api.tickets WITH (security_invoker = true) AS SELECT * FROM public.active_tickets;")
    drops = [f"ALTER TABLE public.{t.name} " + ", ".join(f"DROP COLUMN {c}" for c, _, _ in t.dropped) + ";"
             for t in TABLES if t.dropped]
    return {"20250701000001_assignees.sql": "\n".join(first) + "\n",
            "20250701000002_backfill.sql": "\n".join(backfill) + "\n",
            "20250701000003_views.sql": "\n".join(views) + "\n",
            "20250701000004_drop_denormalized.sql": "-- The point of no return.\n" + "\n".join(drops) + "\n"}


def relations() -> list[str]:
    """Every foreign key of the application, tenant ones included, as no_orphans relations."""
    found = []
    for t in TABLES:
        if t.tenant and t.name != "tenants":
            found.append(f"{t.name}.tenant_id -> tenants.id")
        elif t.name == "tenants":
            found.append("tenants.tenant_id -> tenants.id")
        found += [f"{t.name}.{fk.column} -> {fk.parent}.id" for fk in (*t.fks, *t.added)]
    return found


def post_checks() -> list[dict[str, object]]:
    """The post-migration verification the benchmark times: every table's row count as before, no orphan in any
    foreign key, every view's rows against its base table's (soft deletes by `where`), RLS and policies."""
    pairs = {name: base for name, _, base, _, _ in VIEWS}
    where = {name: cond for name, _, _, cond, _ in VIEWS if cond}
    return [
        {"check": "row_counts_unchanged", "tables": [t.name for t in TABLES]},
        {"check": "no_orphans", "relations": relations()},
        {"check": "view_rowcount_matches", "pairs": pairs, "where": where},
        {"check": "rls_policies", "table": "tickets", "count": 2},
        {"check": "rls_policies", "table": "comments", "count": 2},
        {"check": "query_returns", "name": "open tickets assigned",
         "query": "SELECT count(*) FROM public.tickets WHERE status <> 'closed' AND assignee_id IS NULL", "expect": 0},
    ]


def kept_columns() -> dict[str, list[str]]:
    """Every table's columns after the migrations (what a checksum_unchanged of every table keeps)."""
    found = {}
    for t in TABLES:
        cols = ["id"] + (["tenant_id"] if t.tenant else []) + [fk.column for fk in t.fks]
        cols += [c for c, _, _ in t.columns] + ["created_at", "updated_at"] + (["deleted_at"] if t.soft_delete else [])
        found[t.name] = cols + [fk.column for fk in t.added]
    return found


def write(folder: Path) -> Path:
    """The project: setup/schema.sql, setup/data.sql, migrations/, phase4.toml (with the [[post]] checks the
    benchmark times; run.py writes its own plan of them). Returns the plan's path."""
    (folder / "setup").mkdir(parents=True, exist_ok=True)
    (folder / "migrations").mkdir(exist_ok=True)
    (folder / "setup" / "schema.sql").write_text(schema_sql())
    (folder / "setup" / "data.sql").write_text(data_sql())
    for name, text in migrations().items():
        (folder / "migrations" / name).write_text(text)
    files = list(migrations())
    lines = ["[phase4]", 'name = "Supabase-shaped application (benchmark)"', 'schema = "public"',
             'migrations_dir = "migrations"', "", "[setup]", 'files = ["setup/schema.sql", "setup/data.sql"]',
             'settings = { "bench.rows" = "1000" }', ""]
    for file in files:
        lines += ["[[migration]]", f'file = "{file}"'] + (["destructive = true"] if "drop" in file else []) + [""]
    plan = folder / "phase4.toml"
    plan.write_text("\n".join(lines))
    return plan

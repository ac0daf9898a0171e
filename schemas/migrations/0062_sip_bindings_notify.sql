-- Every change to the location table is announced, at commit, on ledgerline_sip_bindings
-- with the extension's id as payload ('*' for a TRUNCATE), so that each SIP node can forget
-- what it remembers of that extension's bindings (gateway/src/binding_cache.rs). A trigger
-- rather than a NOTIFY in each statement: a change made by any statement, a node's or an
-- operator's, is announced. Postgres folds identical notices of one transaction into one.
CREATE FUNCTION sip_bindings_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('ledgerline_sip_bindings', OLD.extension_id::text);
    ELSE
        PERFORM pg_notify('ledgerline_sip_bindings', NEW.extension_id::text);
        IF TG_OP = 'UPDATE' AND OLD.extension_id IS DISTINCT FROM NEW.extension_id THEN
            PERFORM pg_notify('ledgerline_sip_bindings', OLD.extension_id::text);
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION sip_bindings_notify_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ledgerline_sip_bindings', '*');
    RETURN NULL;
END $$;

CREATE TRIGGER sip_bindings_notify AFTER INSERT OR UPDATE OR DELETE ON sip_bindings
    FOR EACH ROW EXECUTE FUNCTION sip_bindings_notify();
CREATE TRIGGER sip_bindings_notify_truncate AFTER TRUNCATE ON sip_bindings
    FOR EACH STATEMENT EXECUTE FUNCTION sip_bindings_notify_truncate();

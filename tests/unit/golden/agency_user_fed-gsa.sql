-- Read-only ClickHouse access for agency fed-gsa: user govmeter_agency_fed_gsa.
-- Emitted by `metering access agency-user --agency fed-gsa`. Review it, then run it
-- on the ClickHouse server as a user allowed to manage access (or pass --apply).
-- The embedded store (chdb://) has no access control: this needs a server.

-- 1. Shared by every agency user; IF NOT EXISTS makes a repeat a no-op.

-- SELECT only, no setting can be changed (readonly = 1); long or huge queries stop.
CREATE SETTINGS PROFILE IF NOT EXISTS govmeter_agency_readonly
    SETTINGS readonly = 1, max_execution_time = 300, max_memory_usage = 10000000000;

-- What an agency reader may read: the contract views and the tables behind them.
CREATE ROLE IF NOT EXISTS govmeter_agency_reader;
GRANT SELECT ON metering.agency_daily TO govmeter_agency_reader;
GRANT SELECT ON metering.agency_monthly TO govmeter_agency_reader;
GRANT SELECT ON metering.monthly_totals TO govmeter_agency_reader;
GRANT SELECT ON metering.agency_daily_rollup TO govmeter_agency_reader;
GRANT SELECT ON metering.model_daily_rollup TO govmeter_agency_reader;
GRANT SELECT ON metering.agency_monthly_rollup TO govmeter_agency_reader;
GRANT SELECT ON metering.model_monthly_rollup TO govmeter_agency_reader;
GRANT SELECT ON metering.counted_events TO govmeter_agency_reader;
GRANT SELECT ON metering.corrections TO govmeter_agency_reader;
GRANT SELECT ON metering.correction_marks TO govmeter_agency_reader;
GRANT SELECT ON metering.corrections_applied TO govmeter_agency_reader;
GRANT SELECT ON metering.correction_agencies TO govmeter_agency_reader;

-- A table with any row policy hides all its rows from users no policy names. This
-- policy keeps every other user (worker, billing, analysts) seeing every row.
-- Review it if these tables already have row policies of your own.
CREATE ROW POLICY IF NOT EXISTS govmeter_all_rows
    ON metering.agency_daily_rollup,
       metering.model_daily_rollup,
       metering.agency_monthly_rollup,
       metering.model_monthly_rollup,
       metering.counted_events
    AS PERMISSIVE FOR SELECT USING 1 TO ALL;
CREATE ROW POLICY IF NOT EXISTS govmeter_all_rows
    ON metering.corrections,
       metering.correction_marks,
       metering.corrections_applied,
       metering.correction_agencies
    AS PERMISSIVE FOR SELECT USING 1 TO ALL;

-- 2. The agency's user.

CREATE USER IF NOT EXISTS govmeter_agency_fed_gsa
    IDENTIFIED WITH sha256_hash BY '<sha256 hex of the password>'
    SETTINGS PROFILE 'govmeter_agency_readonly';
GRANT govmeter_agency_reader TO govmeter_agency_fed_gsa;

-- At most this much per hour (execution_time in seconds).
CREATE QUOTA IF NOT EXISTS govmeter_agency_fed_gsa
    FOR INTERVAL 1 hour MAX queries = 1000, result_rows = 100000000,
    read_rows = 10000000000, execution_time = 3600
    TO govmeter_agency_fed_gsa;

-- Only this agency's rows, in every table behind the views. RESTRICTIVE: ANDed with
-- govmeter_all_rows. Named for the user, not a role, so SET ROLE cannot shed it.
CREATE ROW POLICY IF NOT EXISTS govmeter_agency_fed_gsa
    ON metering.agency_daily_rollup,
       metering.model_daily_rollup,
       metering.agency_monthly_rollup,
       metering.model_monthly_rollup,
       metering.counted_events
    AS RESTRICTIVE FOR SELECT USING agency_id = 'fed-gsa' TO govmeter_agency_fed_gsa;

-- The corrections of the agency's own events: a range correction of the agency, or one
-- that dealt with an event the agency had before it, has after it, or was first
-- counted for (metering.correction_agencies, filled by the worker from the committed
-- record). A policy's subquery runs with the reader's rights and policies.
CREATE ROW POLICY IF NOT EXISTS govmeter_agency_fed_gsa
    ON metering.corrections
    AS RESTRICTIVE FOR SELECT USING (scope_agency_id = 'fed-gsa' OR correction_seq IN (SELECT correction_seq FROM metering.correction_agencies WHERE agency_id = 'fed-gsa')) TO govmeter_agency_fed_gsa;
CREATE ROW POLICY IF NOT EXISTS govmeter_agency_fed_gsa
    ON metering.correction_marks
    AS RESTRICTIVE FOR SELECT USING ((correction_seq, event_id) IN (SELECT correction_seq, event_id FROM metering.correction_agencies WHERE agency_id = 'fed-gsa')) TO govmeter_agency_fed_gsa;
CREATE ROW POLICY IF NOT EXISTS govmeter_agency_fed_gsa
    ON metering.corrections_applied
    AS RESTRICTIVE FOR SELECT USING (correction_seq IN (SELECT correction_seq FROM metering.corrections WHERE scope_agency_id = 'fed-gsa') OR correction_seq IN (SELECT correction_seq FROM metering.correction_agencies WHERE agency_id = 'fed-gsa')) TO govmeter_agency_fed_gsa;
CREATE ROW POLICY IF NOT EXISTS govmeter_agency_fed_gsa
    ON metering.correction_agencies
    AS RESTRICTIVE FOR SELECT USING (agency_id = 'fed-gsa') TO govmeter_agency_fed_gsa;

-- Tariff corrections (`TariffVersionCorrected`): the `billing` projection keeps each charge
-- as billed and, beside it, as re-rated under the latest correction of the version it was
-- rated with. Invoices show the difference as adjustments in the first open period.
ALTER TABLE rm_rating_tariff_versions ADD COLUMN revision integer NOT NULL DEFAULT 0;

ALTER TABLE rm_charges
    -- The revision of the tariff version the charge was billed with (0: as published).
    ADD COLUMN tariff_revision        integer,
    -- Set once a later correction re-rated the charge: the revision, and the charge under it.
    ADD COLUMN corrected_revision     integer,
    ADD COLUMN corrected_billed_s     integer,
    ADD COLUMN corrected_amount       numeric,
    ADD COLUMN corrected_amount_exact numeric,
    ADD COLUMN corrected_explanation  text;

-- A correction re-rates every charge of one tariff version.
CREATE INDEX rm_charges_tariff_version ON rm_charges (tenant_id, tariff_id, tariff_version);

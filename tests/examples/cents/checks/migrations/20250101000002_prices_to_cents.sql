-- Prices are stored in cents from now on.
UPDATE sales SET value = value * 100;

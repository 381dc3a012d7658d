-- One tenant's tiny CRM before normalization: sales carry a copy of the customer's name.
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE sales (id int PRIMARY KEY, customer_id int REFERENCES customers (id), customer_name text,
                    value numeric NOT NULL);
CREATE TABLE tickets (id int PRIMARY KEY, customer_id int, title text NOT NULL);
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 10) g;
INSERT INTO sales SELECT g, 1 + g % 10, 'customer ' || (1 + g % 10), g * 10 FROM generate_series(1, 50) g;
INSERT INTO tickets SELECT g, 1 + g % 10, 'ticket ' || g FROM generate_series(1, 20) g;

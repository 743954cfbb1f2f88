"""The engines lem-ray measures, behind one interface (base.Backend); registry names them."""

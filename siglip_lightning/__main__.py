from siglip_lightning.cli import main

main()

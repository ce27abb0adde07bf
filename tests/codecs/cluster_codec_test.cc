// placeholder: the cluster codec tests land with the codec
